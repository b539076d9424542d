"""Stage timers: wall clock on the host, CUDA events on a GPU.

Why events on a GPU: kernels are asynchronous, so a host clock around a launch measures the
launch, not the work.  A :class:`StageTimer` records an event pair per stage and reads them all
after one synchronisation at the end of the iteration, so timing adds no stalls of its own.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np

STAT_KEYS = ("min", "mean", "median", "p90", "p95", "p99", "max")


class NullTimer:
    """The timer ``predict`` uses when nobody measures: no cost."""

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield

    def step(self) -> None:
        pass


class StageTimer:
    """Accumulates per-stage milliseconds over iterations (``step()`` closes an iteration)."""

    def __init__(self, device: str = "cpu"):
        self.cuda = str(device).startswith("cuda")
        self.samples: dict[str, list[float]] = defaultdict(list)
        self._pending: list[tuple[str, object, object]] = []
        self._iter_start = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.cuda:
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._pending.append((name, start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._pending.append((name, t0, time.perf_counter()))

    def begin(self) -> None:
        """Mark the start of an iteration (end to end is measured from here to ``step``)."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self._iter_start = time.perf_counter()

    def step(self) -> float:
        """Close an iteration: synchronise, turn the recorded stages into ms; return end to end."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        end = time.perf_counter()
        per_stage: dict[str, float] = defaultdict(float)
        for name, a, b in self._pending:
            per_stage[name] += a.elapsed_time(b) if self.cuda else (b - a) * 1e3
        self._pending.clear()
        for name, ms in per_stage.items():
            self.samples[name].append(ms)
        total = (end - self._iter_start) * 1e3 if self._iter_start is not None else sum(per_stage.values())
        self.samples["end_to_end"].append(total)
        self._iter_start = None
        return total

    def reset(self) -> None:
        self.samples.clear()
        self._pending.clear()

    def summary(self) -> dict[str, dict[str, float]]:
        return {name: stats(values) for name, values in self.samples.items()}


def stats(values: Sequence[float]) -> dict[str, float]:
    """min/mean/median/p90/p95/p99/max of a list of milliseconds."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {k: float("nan") for k in STAT_KEYS}
    p = np.percentile(a, [50, 90, 95, 99])
    return {"min": float(a.min()), "mean": float(a.mean()), "median": float(p[0]),
            "p90": float(p[1]), "p95": float(p[2]), "p99": float(p[3]), "max": float(a.max())}


class Timer:
    """Wall-clock seconds of a ``with`` block (``.seconds``): how long one export took."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
