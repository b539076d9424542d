"""Time several runners round-robin: one whole run of each per round, in a rotating order.

Why: on a machine shared with other jobs, runners timed one block after another see different
background loads (the same suite gave onnxruntime int8 1.35x and then 2.89x torch eager —
bench/results/cpu_backends_interleaved.md).  Interleaving puts every runner under the same load;
rotating the order each round cancels what running right after another runner costs (a thread
pool still spinning, caches).  Each runner is loaded once through :func:`runtime.load` (the same
runner every command uses) and timed end to end, uint8 image in → labels out.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from ..errors import CitysegError, first_line
from ..system.threads import TorchThreads, torch_threads
from ..system.timing import StageTimer, stats
from .auto import Candidate


def time_interleaved(entries: Sequence[Candidate], *, device: str = "cpu", threads: int | None = None,
                     rounds: int = 20, warmup: int = 3, batch: int = 1,
                     size: Sequence[int] | None = None, budget_s: float | None = None,
                     min_rounds: int = 5,
                     on_round: Callable[[int], None] | None = None) -> dict[str, dict[str, Any]]:
    """``{name: {"status": "ok"|"failed", "error", "backend", "precision", "latency_ms"
    {min, median, mean, p90, max}, "rounds"}}``; a runner that fails to load or run is a failed
    row with its reason and the others go on.

    ``budget_s``: stop after the round that passes this many seconds of timing, once
    ``min_rounds`` are done (a slow network on a CPU: 9 runners x 20 rounds x 1 s each is long,
    and every round already compares all runners under one load)."""
    from .. import runtime
    from .benchmark import _close_quietly, _images

    if rounds < 1 or warmup < 0:
        raise CitysegError(f"rounds {rounds}, warmup {warmup}: need at least one round")
    import torch

    rows: dict[str, dict[str, Any]] = {}
    loaded: list[tuple[Candidate, Any]] = []
    width: dict[str, int] = {}  # torch's pool as each runner set it at load (alone, it would keep it)
    images = None
    cuda = str(device).startswith("cuda")
    pool = TorchThreads(torch.get_num_threads())  # put back after every runner has closed
    try:
        for e in entries:
            row: dict[str, Any] = {"status": "failed", "error": None, "backend": None,
                                   "precision": e.precision, "latency_ms": None, "rounds": 0}
            rows[e.name] = row
            try:
                options = dict(e.options, size=tuple(size)) if size else dict(e.options)
                seg = runtime.load(e.spec, device=device, precision=e.precision, threads=threads,
                                   **options)
                width[e.name] = torch.get_num_threads()
                row.update(backend=seg.backend, precision=seg.precision)
                if images is None:
                    images = _images(int(batch), tuple(size) if size else tuple(seg.input_size))
                for _ in range(int(warmup)):
                    seg.run(images)
                loaded.append((e, seg))
            except Exception as exc:  # one runner failing must not sink the others
                row["error"] = (first_line(exc, 300) if isinstance(exc, CitysegError)
                                else f"{type(exc).__name__}: {first_line(exc, 300)}")
        times: dict[str, list[float]] = {e.name: [] for e, _ in loaded}
        start = time.perf_counter()
        for r in range(int(rounds)):
            k = r % max(1, len(loaded))
            for e, seg in loaded[k:] + loaded[:k]:
                # every runner under the thread settings it has alone: an onnxruntime or OpenVINO
                # runner holds torch at 1 thread while open (system/threads.py), which would
                # otherwise time the torch runner loaded before it at one thread
                with torch_threads(width[e.name]):
                    timer = StageTimer(device if cuda else "cpu")
                    timer.begin()
                    try:
                        seg.run(images, timer=timer)
                    except Exception as exc:
                        rows[e.name]["error"] = f"{type(exc).__name__}: {first_line(exc, 300)}"
                        continue
                    times[e.name].append(timer.step())
            if on_round is not None:
                on_round(r)
            if budget_s is not None and r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
                break
        for e, _ in loaded:
            ms = times[e.name]
            if ms and rows[e.name]["error"] is None:
                rows[e.name].update(status="ok", latency_ms=stats(ms), rounds=len(ms))
    finally:
        for _, seg in reversed(loaded):  # each runner restores what the one before it set
            _close_quietly(seg)
        pool.restore()
    return rows


__all__ = ["time_interleaved"]
