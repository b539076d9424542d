"""Benchmarks: per-stage latency, throughput and memory of any artifact, with the machine recorded.

- :func:`cityseg_deploy.bench.benchmark.benchmark` measures a list of artifacts (a row per
  artifact x batch x size; a failing one is a ``failed`` row, never an abort);
- :mod:`.machine` names the machine (CPU model and flags, threads, GPU, versions);
- :mod:`.timing` holds the stage timers (CUDA events on a GPU);
- :mod:`.gemm` measures the machine's sgemm GFLOP/s, the yardstick for "fraction of peak";
- :mod:`.suite` runs a YAML suite from ``bench/*.yaml`` and records its results.

Kept import-light on purpose: the runtime imports :mod:`.timing` from here.
"""
from __future__ import annotations
