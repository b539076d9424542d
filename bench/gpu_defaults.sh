#!/usr/bin/env bash
# Issue 24's GPU check in ONE device call (~6-7 min on an H200; read /work/shared/GPU.md):
#   the figures (bench/gpu_defaults.py: defaults, @fp32/@tf32, DenseASPP, segment, torchvision
#   peer, optimize where present), then the CUDA tests of the new paths with the time left.
# Results come back as $OUT/gpu_defaults_<gpu>.{md,json}, $OUT/gpu_defaults_logs.tgz, $OUT/pytest_gpu.txt.
#   run(command="bash bench/gpu_defaults.sh", timeout_s=540)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
timeout 430 python3 bench/gpu_defaults.py --out "$OUT" --budget-s 380
timeout 90 python3 -m pytest -m gpu -q -p no:cacheprovider -ra tests/test_gpu.py \
  -k "default or tf32 or ieee or device_stage or graphs_replay" > "$OUT/pytest_gpu.txt" 2>&1
tail -5 "$OUT/pytest_gpu.txt"
ls -la "$OUT"
