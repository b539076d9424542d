"""Closed-loop load on ``cityseg serve`` (Ray Serve): throughput, latency percentiles, errors, 503s.

C clients each send a request, wait for the answer, send the next, for a fixed duration per level
(keep-alive connections, 256x512 PNGs of the synthetic set), against a **batch-dynamic** int8
DeepLabV3-small ONNX graph (a static graph would run a "batch" as one call per image).  Phases on
one 2-CPU Ray cluster (issue 26 targets):

1. model A alone (1 replica, its CPU budget ``--cpus`` → that many threads): c=1 and c=16;
   target c=16 ≥ 1.5× the requests/s of c=1, p99 reported, 0 errors (16 < the queue limit);
2. models A and B side by side (two named applications, one HTTP port, routes ``/`` and
   ``/segB``), each under c=8: both answer, 0 errors;
3. overload on B (``--max-queue 8``: 16 in its replica + 8 waiting) at c=32: only 200s and 503s
   (with ``Retry-After``).

The CPUs are shared with other jobs on this machine: the load average is recorded before and
after, and ratios measured in one run are what to read.

    PYTHONPATH=. python bench/serve_load.py [--duration 20] [--size 256x512] [--max-batch 8]

(``bench/results/serve_load.*`` are the earlier single-model version's record, issue 16.)
"""
from __future__ import annotations

import argparse
import http.client
import os
import shutil
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


def closed_loop(host: str, port: int, bodies: list[bytes], clients: int, duration: float,
                path: str = "/v1/segment") -> dict:
    lat: list[float] = []
    errors: list[str] = []
    refused: list[str] = []  # 503 with Retry-After: the queue limit doing its job
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
                conn.request("POST", path, body=body, headers={"Content-Type": "image/png"})
                resp = conn.getresponse()
                data = resp.read()
                ok = resp.status == 200 and data[:4] == b"\x89PNG"
                busy = resp.status == 503 and resp.getheader("Retry-After") is not None
            except OSError as exc:
                ok, busy, data = False, False, str(exc).encode()
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
            ms = 1000.0 * (time.perf_counter() - t)
            with lock:
                if ok:
                    lat.append(ms)
                elif busy:
                    refused.append(data[:120].decode(errors="replace"))
                else:
                    errors.append(data[:120].decode(errors="replace"))
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"concurrency": clients, "path": path, "duration_s": wall, "requests": len(lat),
            "errors": len(errors), "error_samples": errors[:3], "refused_503": len(refused),
            "throughput_rps": len(lat) / wall, "latency_ms": percentiles(lat) if lat else None}


def build(folder: Path, n: int, size: tuple[int, int]) -> tuple[Path, Path]:
    """Synthetic images and a batch-dynamic int8 DeepLabV3-small ONNX graph (calibrated on them)."""
    from cityseg_deploy.bench.fixtures import synthetic_int8_onnx

    return synthetic_int8_onnx(folder, n, size, dynamic=True, out=str(folder / "segA.onnx"))


def batch_counts(url: str) -> dict[int, float]:
    """Model calls per batch size, summed over the application's replicas (from /v1/health);
    key -1 holds the replicas' seconds in the model."""
    import json
    import urllib.request

    with urllib.request.urlopen(url + "/v1/health", timeout=30) as resp:
        doc = json.loads(resp.read())
    out: dict[int, float] = {-1: 0.0}
    for rep in doc["replicas"]:
        out[-1] += float(rep["model_seconds"])
        for size, n in rep["batch_counts"].items():
            out[int(size)] = out.get(int(size), 0) + int(n)
    return out


def mean_batch(before: dict[int, float], after: dict[int, float]) -> float | None:
    calls = {s: after.get(s, 0) - before.get(s, 0) for s in after if s > 0}
    n = sum(calls.values())
    return sum(s * c for s, c in calls.items()) / n if n else None


def side_by_side(host: str, port: int, bodies: list[bytes], paths: list[str], clients: int,
                 duration: float) -> list[dict]:
    out: list[dict] = [{} for _ in paths]

    def run(k: int) -> None:
        out[k] = closed_loop(host, port, bodies, clients, duration, paths[k])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _row(label: str, lv: dict) -> str:
    la = lv["latency_ms"] or {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    return (f"| {label} | {lv['concurrency']} | {lv['requests']} | {lv['throughput_rps']:.2f} | {la['p50']:.1f} | "
            f"{la['p95']:.1f} | {la['p99']:.1f} | {lv['errors']} | {lv['refused_503']} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--cpus", type=float, default=1.0, help="CPUs (= threads) per replica")
    ap.add_argument("--b-queue", type=int, default=8, help="--max-queue of model B (overloaded in phase 3)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", default=str(RESULTS / "serve_batching"))
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    import ray

    from cityseg_deploy.bench.records import write_record
    from cityseg_deploy.scale import serve as service
    from cityseg_deploy.system.machine import load_average, machine_info, machine_line

    cpus = len(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    root, model_a = build(work, 16, size)
    model_b = model_a.with_name("segB.onnx")
    shutil.copyfile(model_a, model_b)
    for side in (".json", ".yaml"):  # a sidecar, if the export wrote one, travels with the copy
        if model_a.with_suffix(side).exists():
            shutil.copyfile(model_a.with_suffix(side), model_b.with_suffix(side))
    bodies = [p.read_bytes() for p in sorted((root / "leftImg8bit" / "val").rglob("*.png"))]
    load_before = load_average()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    common = dict(cpus_per_replica=args.cpus, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms)
    a = service.start(str(model_a), name="segA", port=args.port,
                      options=service.ServeOptions(max_queue=64, **common))
    host, port = "127.0.0.1", a.port
    closed_loop(host, port, bodies, 4, 3.0)  # warm-up (first batches, proxy routes)
    alone = []
    for c in (1, 16):
        before = batch_counts(a.url)
        alone.append(closed_loop(host, port, bodies, c, args.duration))
        after = batch_counts(a.url)
        alone[-1]["mean_batch"] = mean_batch(before, after)
        # the replica's share of the level's wall time spent in the model: near 1 = model-bound
        alone[-1]["model_busy"] = (after[-1] - before[-1]) / alone[-1]["duration_s"]
    b = service.start(str(model_b), name="segB", options=service.ServeOptions(max_queue=args.b_queue, **common))
    paths = ["/v1/segment", f"{b.route_prefix}/v1/segment"]
    closed_loop(host, port, bodies, 2, 3.0, paths[1])
    both = side_by_side(host, port, bodies, paths, 8, args.duration)
    overload = closed_loop(host, port, bodies, 32, args.duration / 2, paths[1])
    load_after = load_average()
    for served in (b, a):
        service._stop(served, private_cluster=True)
    ray.shutdown()

    c1, c16 = alone
    ratio = c16["throughput_rps"] / c1["throughput_rps"]
    checks = {"c16_over_c1_ge_1.5": ratio >= 1.5,
              "zero_errors_below_queue_limit": all(lv["errors"] == 0 and lv["refused_503"] == 0
                                                   for lv in alone + both),
              "two_models_side_by_side_answer": all(lv["requests"] > 0 for lv in both),
              "overload_only_200_or_503": overload["errors"] == 0 and overload["refused_503"] > 0}
    doc = {"machine": machine_info(cpus), "load_average_before": load_before, "load_average_after": load_after,
           "shared_cpu_note": "the CPUs were shared with other helpers' jobs during the run",
           "model": "deeplabv3_small ONNX int8 (QDQ), batch-dynamic", "size": list(size),
           "cpus_per_replica": args.cpus, "b_max_queue": args.b_queue, "max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms,
           "alone": alone, "side_by_side": both, "overload": overload, "c16_over_c1": ratio, "checks": checks}
    lines = [f"# cityseg serve under closed-loop load ({size[0]}x{size[1]} PNG, int8 DeepLabV3-small, "
             f"batch-dynamic)\n",
             f"Machine: {machine_line(doc['machine'])}; {cpus} CPUs **shared with other helpers' jobs** "
             f"(load average before {load_before}, after {load_after}). One replica per model, "
             f"{args.cpus:g} CPU = {args.cpus:g} onnxruntime thread(s), --max-batch {args.max_batch}, "
             f"--batch-wait-ms {args.batch_wait_ms:g}; {args.duration:g} s per level.\n",
             "| phase | clients | requests | req/s | p50 (ms) | p95 (ms) | p99 (ms) | errors | 503 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
             _row("A alone (max-queue 64)", c1), _row("A alone (max-queue 64)", c16),
             _row("A beside B", both[0]), _row(f"B beside A (max-queue {args.b_queue})", both[1]),
             _row(f"B overloaded (max-queue {args.b_queue})", overload),
             f"\nc=16 / c=1 requests/s: **{ratio:.2f}x**; mean images per model call: c=1 "
             f"{c1['mean_batch'] or 0:.2f}, c=16 {c16['mean_batch'] or 0:.2f}; fraction of the time the "
             f"replica was in the model: c=1 {c1['model_busy']:.2f}, c=16 {c16['model_busy']:.2f}.",
             "\nChecks: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items())]
    write_record(args.out, doc, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
