"""Benchmarks: per-stage latency, throughput and memory of any artifact, with the machine recorded.

- :func:`cityseg_deploy.bench.benchmark.benchmark` measures a list of artifacts (a row per
  artifact x batch x size; a failing one is a ``failed`` row, never an abort);
- :mod:`.auto` picks the fastest runner for a model on this machine (``--backend auto``);
- the machine description and the stage timers live below the runtime, in :mod:`..system`;
- :mod:`.gemm` measures the machine's sgemm GFLOP/s, the yardstick for "fraction of peak";
- :mod:`.suite` runs a YAML suite from ``bench/*.yaml`` and records its results.
"""
from __future__ import annotations
