"""The machine's dense single-precision matmul rate: the yardstick for "fraction of peak".

A large ``torch.mm`` (oneDNN/MKL sgemm on CPU, cuBLAS on GPU) runs close to what the cores can
do in fp32; a network's FLOPs divided by its latency, over this rate, says how much of the
machine a backend uses — a figure that survives a change of machine better than milliseconds.
"""
from __future__ import annotations

import time


def sgemm_gflops(n: int = 2048, *, device: str = "cpu", seconds: float = 1.0,
                 threads: int | None = None) -> float:
    """GFLOP/s of ``n x n @ n x n`` float32 matmuls, best of repeated runs for ~``seconds``."""
    import torch

    from ..system.threads import torch_threads

    with torch_threads(threads):
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        c = torch.empty(n, n, device=device)
        sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
        torch.mm(a, b, out=c)  # warm-up
        sync()
        best, deadline = float("inf"), time.perf_counter() + seconds
        reps = 0
        while reps < 3 or time.perf_counter() < deadline:
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            sync()
            best = min(best, time.perf_counter() - t0)
            reps += 1
        return 2.0 * n ** 3 / best / 1e9
