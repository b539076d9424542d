"""Run the CPU backend suite (bench/cpu_backends.yaml) and print its table.

Usage: ``python bench/cpu_backends.py [--work DIR]`` — same as
``cityseg bench --suite bench/cpu_backends.yaml``.  Takes minutes on 2 cores: run it when the
machine is quiet; the load average is recorded in the result.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cityseg_deploy.bench.suite import run_suite

HERE = Path(__file__).parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", default=None, help="where the artifacts are built (cached)")
    args = parser.parse_args()
    report = run_suite(HERE / "cpu_backends.yaml", work=args.work, results=HERE / "results" / "cpu_backends")
    print(report["markdown"])
