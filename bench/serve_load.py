"""Closed-loop load on ``cityseg serve`` (Ray Serve): latency percentiles, throughput, errors.

C clients (1, 2, 4, 8) each send a request, wait for the answer, send the next, for a fixed
duration per level (keep-alive connections, 256x512 PNGs of the synthetic set).  The reference
is the same work in process: decode the PNG, ``Segmenter.run``, encode the answer PNG — the
service's p50 at concurrency 1 minus that p50 is what HTTP + Ray Serve add.  Targets (issue
16): c=1 p50 <= in-process p50 + 15 ms; c=8 throughput >= c=1 (batching works); 0 errors.
Run with ``OMP_NUM_THREADS=1`` (why: see ``bench/ray_batch.py``), as a 1-CPU Ray replica gets it.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/serve_load.py [--duration 15] [--size 256x512] [--max-batch 8]
"""
from __future__ import annotations

import argparse
import http.client
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "n": int(a.size)}


def closed_loop(host: str, port: int, bodies: list[bytes], clients: int, duration: float) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        i = k
        while time.perf_counter() < stop_at:
            body = bodies[i % len(bodies)]
            i += 1
            t = time.perf_counter()
            try:
                conn.request("POST", "/v1/segment", body=body, headers={"Content-Type": "image/png"})
                resp = conn.getresponse()
                data = resp.read()
                ok = resp.status == 200 and data[:4] == b"\x89PNG"
            except OSError as exc:
                ok, data = False, str(exc).encode()
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
            ms = 1000.0 * (time.perf_counter() - t)
            with lock:
                (lat.append(ms) if ok else errors.append(data[:120].decode(errors="replace")))
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"concurrency": clients, "duration_s": wall, "requests": len(lat), "errors": len(errors),
            "error_samples": errors[:3], "throughput_rps": len(lat) / wall, "latency_ms": percentiles(lat)}


def in_process(model: Path, bodies: list[bytes], threads: int, duration: float) -> dict:
    from cityseg_deploy import runtime
    from cityseg_deploy.labels import get_label_set
    from cityseg_deploy.scale.codec import decode_upload, encode_answer

    seg = runtime.load(model, threads=threads)
    labels = get_label_set(seg.meta.label_set)
    lat, model_only = [], []
    stop_at = time.perf_counter() + duration
    i = 0
    while time.perf_counter() < stop_at:
        t = time.perf_counter()
        image = decode_upload(bodies[i % len(bodies)])
        m = time.perf_counter()
        pred = seg.run([image])[0][0]
        model_only.append(1000.0 * (time.perf_counter() - m))
        encode_answer(pred, image, labels, "labelIds")
        lat.append(1000.0 * (time.perf_counter() - t))
        i += 1
    return {"latency_ms": percentiles(lat), "model_only_ms": percentiles(model_only)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--levels", default="1,2,4,8")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", default=str(RESULTS / "serve_load"))
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from ray_batch import build

    from cityseg_deploy.bench.records import write_record
    from cityseg_deploy.system.machine import load_average, machine_info, machine_line
    from cityseg_deploy.scale import serve as service

    threads = len(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    root, model = build(work, 16, size)
    bodies = [p.read_bytes() for p in sorted((root / "leftImg8bit" / "val").rglob("*.png"))]
    ref = in_process(model, bodies, threads, args.duration)
    url = service.start(str(model), port=args.port, threads=threads, max_batch=args.max_batch,
                        batch_wait_ms=args.batch_wait_ms, cpus_per_replica=1.0)
    host, port = "127.0.0.1", args.port
    closed_loop(host, port, bodies, 1, 3.0)  # warm-up (first batch, proxy routes)
    levels = [closed_loop(host, port, bodies, int(c), args.duration) for c in args.levels.split(",")]
    from ray import serve

    serve.shutdown()
    c1, c8 = levels[0], levels[-1]
    checks = {"c1_p50_within_in_process_plus_15ms":
              c1["latency_ms"]["p50"] <= ref["latency_ms"]["p50"] + 15.0,
              "c8_throughput_ge_c1": c8["throughput_rps"] >= c1["throughput_rps"],
              "zero_errors": all(lv["errors"] == 0 for lv in levels)}
    doc = {"machine": machine_info(threads), "load_average_after": load_average(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "url": url,
           "model": "deeplabv3_small ONNX int8 (QDQ)", "size": list(size), "threads": threads,
           "max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms, "in_process": ref,
           "levels": levels, "checks": checks}
    lines = [f"# cityseg serve under closed-loop load ({size[0]}x{size[1]} PNG, int8 DeepLabV3-small)\n",
             f"Machine: {machine_line(doc['machine'])}; "
             f"one replica ({threads} threads), --max-batch {args.max_batch}, --batch-wait-ms "
             f"{args.batch_wait_ms:g}; {args.duration:g} s per level; load average after: "
             f"{doc['load_average_after']}; OMP_NUM_THREADS={doc['omp_num_threads']}.\n",
             f"In process (decode + run + encode): p50 {ref['latency_ms']['p50']:.1f} ms, p95 "
             f"{ref['latency_ms']['p95']:.1f} ms (model alone p50 {ref['model_only_ms']['p50']:.1f} ms).\n",
             "| clients | requests | throughput (req/s) | p50 (ms) | p95 (ms) | p99 (ms) | errors |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for lv in levels:
        la = lv["latency_ms"]
        lines.append(f"| {lv['concurrency']} | {lv['requests']} | {lv['throughput_rps']:.2f} | {la['p50']:.1f} | "
                     f"{la['p95']:.1f} | {la['p99']:.1f} | {lv['errors']} |")
    lines.append("\nChecks: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()))
    write_record(args.out, doc, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
