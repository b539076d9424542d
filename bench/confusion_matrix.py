"""Benchmark: streamed confusion-matrix updates on CPU, 1000 images at 1024x512 (19 classes).

Why: evaluation of a split must cost far less than inference, so the metric engine has a
target (>= 200 images/s on one CPU).  Only ``ConfusionMatrix.update`` is timed, over
precomputed random uint8 maps (5% ignore pixels in the truth); the machine (CPU model, flags,
threads) is recorded beside the figure because it changes from session to session.

Run: ``python bench/confusion_matrix.py [--images 1000] [--threads N]``; writes
``bench/results/confusion_matrix.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cityseg_deploy.bench.records import write_record
from cityseg_deploy.metrics import ConfusionMatrix

RESULTS = Path(__file__).parent / "results"
TARGET_IPS = 200.0
FLAGS_OF_INTEREST = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                     "amx_tile", "amx_bf16", "amx_int8", "sse4_2")


def cpu_info() -> dict:
    """CPU model and the instruction-set flags that matter for these kernels."""
    model, flags = platform.processor() or "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": [f for f in FLAGS_OF_INTEREST if f in flags],
            "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


def make_maps(n_unique: int, size: tuple[int, int], classes: int, seed: int = 0):
    """``n_unique`` random (pred, target) uint8 pairs, reused cyclically (memory stays small)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n_unique):
        target = rng.integers(0, classes, size, dtype=np.uint8)
        target[rng.random(size) < 0.05] = 255
        pred = rng.integers(0, classes, size, dtype=np.uint8)
        pairs.append((torch.from_numpy(pred), torch.from_numpy(target)))
    return pairs


def run(images: int, size: tuple[int, int], classes: int, repeats: int) -> dict:
    pairs = make_maps(16, size, classes)
    cm = ConfusionMatrix(classes)
    for pred, target in pairs[:4]:  # warm-up
        cm.update(pred, target)
    runs = []
    for _ in range(repeats):
        cm.reset()
        start = time.perf_counter()
        for i in range(images):
            pred, target = pairs[i % len(pairs)]
            cm.update(pred, target)
        runs.append(time.perf_counter() - start)
    best = min(runs)
    assert int(cm.matrix.sum()) > 0
    return {"images": images, "size": list(size), "classes": classes, "repeats": repeats,
            "seconds": runs, "best_seconds": best, "images_per_s": images / best,
            "median_images_per_s": images / float(np.median(runs)),
            "ms_per_image": 1000 * best / images, "target_images_per_s": TARGET_IPS,
            "meets_target": images / best >= TARGET_IPS}


def markdown(doc: dict) -> str:
    r, m = doc["result"], doc["machine"]
    return "\n".join([
        "# Confusion-matrix update benchmark", "",
        f"{r['images']} images of {r['size'][1]}x{r['size'][0]} (WxH), {r['classes']} classes, "
        "random uint8 maps (5% ignore), only `ConfusionMatrix.update` timed; best of "
        f"{r['repeats']} runs.", "",
        "| images/s (best) | images/s (median) | ms/image | target | meets |",
        "|---:|---:|---:|---:|---|",
        f"| {r['images_per_s']:.1f} | {r['median_images_per_s']:.1f} | {r['ms_per_image']:.2f} | "
        f"{r['target_images_per_s']:.0f} | {'yes' if r['meets_target'] else 'no'} |", "",
        f"Machine: {m['cpu']}; flags: {', '.join(m['cpu_flags']) or '-'}; "
        f"{m['logical_cpus']} logical CPUs (shared), torch threads {m['torch_threads']}; "
        f"torch {m['torch']}, numpy {m['numpy']}, Python {m['python']}.", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", default="512x1024", help="HxW")
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "confusion_matrix")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    doc = {"benchmark": "confusion_matrix_update", "machine": cpu_info(),
           "result": run(args.images, (h, w), args.classes, args.repeats)}
    write_record(args.out, doc, markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
