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

from ..errors import CitysegError
from ..system.threads import TorchThreads
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
    and every round already compares all runners under one load).  The rows are bench's
    (:class:`~.benchmark._RowRun`: each runner timed at its own torch width, warmed as it loads).
    """
    from .benchmark import _RowRun

    if rounds < 1 or warmup < 0:
        raise CitysegError(f"rounds {rounds}, warmup {warmup}: need at least one round")
    import torch

    pool = TorchThreads(torch.get_num_threads())  # put back after every runner has closed
    runs: list[tuple[Candidate, _RowRun]] = []
    try:
        for e in entries:
            run = _RowRun(e.spec, device=device, batch=batch, size=size, threads=threads,
                          precision=e.precision, runner=None, label=e.name, options=e.options)
            run.warm(warmup)
            runs.append((e, run))
        start = time.perf_counter()
        for r in range(int(rounds)):
            live = [run for _, run in runs if run.alive]
            k = r % max(1, len(live))
            for run in live[k:] + live[:k]:
                run.step()
            if on_round is not None:
                on_round(r)
            if budget_s is not None and r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
                break
    finally:  # closed last-loaded first: each runner restores the thread count it found
        rows = {e.name: run.finish() for e, run in reversed(runs)}
        pool.restore()
    return {e.name: {"status": rows[e.name]["status"], "error": rows[e.name]["error"],
                     "backend": rows[e.name]["backend"], "precision": rows[e.name]["precision"] or e.precision,
                     "latency_ms": rows[e.name]["latency_ms"], "rounds": rows[e.name].get("iters", 0)}
            for e in entries}


__all__ = ["time_interleaved"]
