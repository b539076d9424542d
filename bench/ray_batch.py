"""What does ``predict --engine ray`` cost over single-process ``predict``?  (issue 16)

Same 200 synthetic images at 256x512, same int8 ONNX artifact (DeepLabV3-small, random
weights: speed does not depend on them), same total threads (the machine's logical CPUs):
- single: ``predict_split(..., threads=T)``;
- ray x1: one actor with T threads;  ray x2: two actors with T/2 threads each.
The Ray cluster is started once before timing (its start-up is reported apart: a cluster is
started once per session, not per job); each Ray job's time includes starting its actors and
loading the model in them, as single's includes loading.  Rounds are interleaved so a noisy
shared machine hits every variant alike; ratios use medians.  Labels are compared file by file.

Run with ``OMP_NUM_THREADS=1``: Ray gives a 1-CPU actor ``OMP_NUM_THREADS=1``, and with torch's
OpenMP pool left at its default the single-process side pays for it competing with onnxruntime's
own threads (600-740 ms against 148-243 ms per 256x512 int8 image in one process, load average
~10 on this 2-core machine) — so both sides run with it, and ``--threads`` sets onnxruntime's.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/ray_batch.py [--images 200] [--size 256x512] [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def build(folder: Path, n: int, size: tuple[int, int]) -> tuple[Path, Path]:
    from cityseg_deploy.bench.fixtures import synthetic_int8_onnx

    return synthetic_int8_onnx(folder, n, size)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "ray_batch"))
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    from cityseg_deploy.bench.records import write_record
    from cityseg_deploy.system.machine import load_average, machine_info, machine_line
    from cityseg_deploy.evaluation import predict_split
    from cityseg_deploy.scale.cluster import connect
    from cityseg_deploy.scale.ray_batch import RayOptions, ray_predict

    threads = len(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    root, model = build(work, args.images, size)
    t0 = time.perf_counter()
    connect(None, num_cpus=threads)
    cluster_s = time.perf_counter() - t0

    def single(out: Path) -> None:
        predict_split(str(model), root, out, threads=threads, progress=False)

    def on_ray(actors: int):
        def job(out: Path) -> None:
            ray_predict(str(model), root, out, RayOptions(actors=actors, threads=threads // actors),
                        progress=False)
        return job

    variants = {"single": single, "ray x1": on_ray(1), f"ray x{threads}": on_ray(threads)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    outs = {k: work / k.replace(" ", "_") for k in variants}
    for _ in range(args.rounds):
        for name, job in variants.items():
            shutil.rmtree(outs[name], ignore_errors=True)
            t = time.perf_counter()
            job(outs[name])
            times[name].append(time.perf_counter() - t)
    ref = {p.name: p.read_bytes() for p in outs["single"].iterdir()}
    rows = []
    for name in variants:
        files = {p.name: p.read_bytes() for p in outs[name].iterdir()}
        med = statistics.median(times[name])
        rows.append({"variant": name, "seconds": times[name], "median_s": med,
                     "images_per_s": args.images / med,
                     "ratio_vs_single": statistics.median(times["single"]) / med,
                     "files": len(files), "identical_files": sum(files.get(k) == v for k, v in ref.items())})
    doc = {"machine": machine_info(threads), "load_average_after": load_average(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "images": args.images, "size": list(size), "model": "deeplabv3_small ONNX int8 (QDQ)",
           "threads_total": threads, "ray_cluster_start_s": cluster_s, "rows": rows,
           "target": "ray >= 0.85x single-process images/s"}
    lines = [f"# predict --engine ray vs single-process ({args.images} images {size[0]}x{size[1]}, int8)\n",
             f"Machine: {machine_line(doc['machine'])}; load average after: "
             f"{doc['load_average_after']}; OMP_NUM_THREADS={doc['omp_num_threads']}. Ray cluster start-up "
             f"{cluster_s:.1f} s (once, not timed below). Medians of {args.rounds} interleaved rounds.\n",
             "| variant | images/s | x single | time per round (s) | files identical to single |",
             "| --- | ---: | ---: | --- | ---: |"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['images_per_s']:.2f} | {r['ratio_vs_single']:.2f} | "
                     f"{', '.join(f'{s:.1f}' for s in r['seconds'])} | {r['identical_files']}/{len(ref)} |")
    write_record(args.out, doc, "\n".join(lines))
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
