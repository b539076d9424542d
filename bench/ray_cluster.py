"""``predict --engine ray`` as a user runs it: defaults, start-up included, one box and two nodes.

Issue 26's targets, each measured with the CLI in a subprocess (wall time from launch to exit, so
Python start-up, imports, the private cluster's start-up and shutdown are all counted):

- one box: ``cityseg predict MODEL --data ROOT --out O`` vs the same with ``--engine ray`` (its
  defaults: a private cluster, as many 1-CPU actors as the box has CPUs) on N images (default
  300) at 256x512, DeepLabV3-small int8 ONNX; target >= 0.9x;
- two nodes: a head and a second raylet started on this box (``ray start``, 1 CPU each), the
  default ``--engine ray --address HEAD`` job vs one process on one CPU (``taskset -c 0``,
  ``--threads 1``); target >= 1.6x;
- where a Ray job's start-up goes: the seconds from launch to the private cluster being up, to
  the actors being placed, to the first output file, and the shutdown after the last.

Variants run interleaved, rounds repeated, medians reported; every output is compared file by
file with single-process's.  The machine is shared (other jobs run on the same cores): the load
average is recorded before and after every run.

    PYTHONPATH=. python bench/ray_cluster.py [--images 300] [--size 256x512] [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", ""))
                                                       if p))


def timed(cmd: list[str], out: Path) -> dict:
    """Run ``cmd``; wall seconds, seconds to the first file in ``out``, load before/after."""
    shutil.rmtree(out, ignore_errors=True)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    first = None
    while proc.poll() is None:
        if first is None and out.is_dir() and any(p.suffix == ".png" for p in out.iterdir()):
            first = time.perf_counter() - t0
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr[-2000:]}")
    return {"wall_s": wall, "first_output_s": first, "load_before": load0, "load_after": os.getloadavg()[0],
            "stdout": stdout.strip().splitlines()[-1] if stdout.strip() else ""}


def same_files(a: Path, b: Path) -> tuple[int, int]:
    ref = {p.name: p.read_bytes() for p in a.iterdir() if p.suffix == ".png"}
    got = {p.name: p.read_bytes() for p in b.iterdir() if p.suffix == ".png"}
    return sum(got.get(k) == v for k, v in ref.items()), len(ref)


def start_two_nodes(base: Path) -> tuple[str, dict]:
    """A head and a second raylet on this box, 1 CPU each (as tests/test_scale_ray.py does)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    e = dict(env(), RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "token"))
    if e["RAY_AUTH_MODE"] == "token" and not (Path.home() / ".ray" / "auth_token").is_file() \
            and not e.get("RAY_AUTH_TOKEN") and not e.get("RAY_AUTH_TOKEN_PATH"):
        (base / "token").write_text(os.urandom(32).hex())
        e["RAY_AUTH_TOKEN_PATH"] = str(base / "token")
    ray = str(Path(sys.executable).with_name("ray"))
    common = ["--num-cpus=1", "--disable-usage-stats"]
    (base / "nodes").mkdir(exist_ok=True)
    for args in ([ "--head", f"--port={port}", f"--temp-dir={base / 't'}", "--include-dashboard=false", *common],
                 [f"--address=127.0.0.1:{port}", *common]):
        subprocess.run([ray, "start", *args], cwd=base / "nodes", env=e, check=True, capture_output=True,
                       timeout=600)
    return f"127.0.0.1:{port}", e


def stop_nodes(base: Path) -> None:
    import psutil

    sys.path.insert(0, str(REPO))
    from cityseg_deploy.scale.reaper import sweep

    found: dict[int, float] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if str(base) in " ".join(proc.info["cmdline"] or []):
                for p in [proc, *proc.children(recursive=True)]:
                    found[p.pid] = p.create_time()
        except psutil.Error:
            continue
    sweep(found)


def stages(model: Path, images: Path, out: Path) -> dict:
    """Where a default one-box Ray job's seconds go (in-process, the same calls the CLI makes)."""
    code = f"""
import time, json, sys
T0 = time.perf_counter()
marks = {{}}
def mark(k): marks[k] = round(time.perf_counter() - T0, 2)
from cityseg_deploy.scale import cluster, placement, ray_batch
c0, w0, r0 = cluster.connect, placement.wait_placeable, ray_batch.run_rows
def c(*a, **k):
    mark("driver ready (paths, model read)"); r = c0(*a, **k); mark("private cluster up"); return r
def w(*a, **k):
    r = w0(*a, **k); mark("actors placeable"); return r
def rr(*a, **k):
    first = True
    for res in r0(*a, **k):
        if first: mark("first batch back (actors started, model loaded)"); first = False
        yield res
    mark("last batch back")
cluster.connect, placement.wait_placeable, ray_batch.run_rows = c, w, rr
from cityseg_deploy.scale.ray_batch import RayOptions, ray_predict_images
ray_predict_images({str(model)!r}, {str(images)!r}, {str(out)!r}, RayOptions(), progress=False, overwrite=True)
cluster.stop_private()
mark("cluster shut down, folder removed")
print(json.dumps(marks))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), check=True)
    import json

    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default=None, help="reuse data + model built here")
    ap.add_argument("--out", default=str(RESULTS / "ray_cluster"))
    ap.add_argument("--skip-two-nodes", action="store_true")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "bench"))
    from ray_batch import build

    from cityseg_deploy.bench.records import write_record
    from cityseg_deploy.system.machine import machine_info, machine_line

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-rayc-"))
    model = work / "deeplabv3_small_int8.onnx"
    root = work / "data"
    if not model.is_file():
        root, model = build(work, args.images, size)
    py = [sys.executable, "-m", "cityseg_deploy"]
    predict = [*py, "predict", str(model), "--data", str(root), "--no-progress"]
    outs = {k: work / k for k in ("single", "ray", "single_1cpu", "ray_2nodes")}
    one_box = {"single": [*predict, "--out", str(outs["single"])],
               "ray": [*predict, "--out", str(outs["ray"]), "--engine", "ray"]}
    runs: dict[str, list[dict]] = {k: [] for k in outs}
    for _ in range(args.rounds):
        for name, cmd in one_box.items():
            runs[name].append(timed(cmd, outs[name]))
            print(name, {k: v for k, v in runs[name][-1].items() if k != "stdout"}, flush=True)
    listing = work / "first20.txt"
    listing.write_text("\n".join(str(p) for p in sorted((root / "leftImg8bit" / "val").rglob("*.png"))[:20]))
    breakdown = stages(model, listing, work / "stages")
    print("stages", breakdown, flush=True)

    address = None
    if not args.skip_two_nodes:
        base = Path(tempfile.mkdtemp(prefix="bn", dir="/tmp"))
        try:
            t = time.perf_counter()
            address, _ = start_two_nodes(base)
            nodes_up = time.perf_counter() - t
            two = {"single_1cpu": ["taskset", "-c", "0", *predict, "--out", str(outs["single_1cpu"]),
                                   "--threads", "1"],
                   "ray_2nodes": [*predict, "--out", str(outs["ray_2nodes"]), "--engine", "ray",
                                  "--address", address]}
            for _ in range(args.rounds):
                for name, cmd in two.items():
                    runs[name].append(timed(cmd, outs[name]))
                    print(name, {k: v for k, v in runs[name][-1].items() if k != "stdout"}, flush=True)
        finally:
            stop_nodes(base)
            shutil.rmtree(base, ignore_errors=True)

    def med(name: str) -> float | None:
        return statistics.median(r["wall_s"] for r in runs[name]) if runs[name] else None

    rows = []
    for name, ref, group in (("single", "single", "one box"), ("ray", "single", "one box"),
                             ("single_1cpu", "single_1cpu", "two nodes"), ("ray_2nodes", "single_1cpu", "two nodes")):
        if not runs[name]:
            continue
        same, total = same_files(outs["single"], outs[name])
        rows.append({"group": group, "variant": name, "runs": runs[name], "median_s": med(name),
                     "images_per_s": args.images / med(name), "ratio": med(ref) / med(name),
                     "first_output_s": statistics.median(r["first_output_s"] or 0 for r in runs[name]),
                     "identical_files": same, "files": total})
    doc = {"machine": machine_info(len(os.sched_getaffinity(0))), "images": args.images, "size": list(size),
           "model": "deeplabv3_small ONNX int8 (QDQ), random weights", "rounds": args.rounds,
           "two_nodes_start_s": None if args.skip_two_nodes else nodes_up, "rows": rows,
           "ray_job_stages_20_images_s": breakdown,
           "targets": {"one box ray default vs single default": ">= 0.9x",
                       "two nodes x 1 CPU vs one process on 1 CPU": ">= 1.6x"}}
    labels = {"single": "single process, defaults", "ray": "--engine ray, defaults (private cluster)",
              "single_1cpu": "single process on 1 CPU (taskset -c 0, --threads 1)",
              "ray_2nodes": "--engine ray --address HEAD, defaults (2 nodes x 1 CPU)"}
    lines = [f"# predict --engine ray as a user runs it ({args.images} images {size[0]}x{size[1]}, int8 ONNX)\n",
             f"Machine: {machine_line(doc['machine'])}. Shared with other jobs: load average (1 min) "
             f"before/after each run is in the table. Wall time of the CLI from launch to exit "
             f"(start-up included), {args.rounds} interleaved rounds, medians.\n",
             "| group | variant | wall (s) per round | images/s | x baseline | first output (s) | load before→after | files identical to single |",
             "| --- | --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        loads = ", ".join(f"{x['load_before']:.1f}→{x['load_after']:.1f}" for x in r["runs"])
        walls = ", ".join(f"{x['wall_s']:.1f}" for x in r["runs"])
        lines.append(f"| {r['group']} | {labels[r['variant']]} | {walls} "
                     f"| {r['images_per_s']:.2f} | {r['ratio']:.2f} | {r['first_output_s']:.1f} | {loads} | "
                     f"{r['identical_files']}/{r['files']} |")
    lines += ["", "Where a default one-box Ray job's time goes (20 images, seconds since launch of the "
              "Python process):", "", "| stage | s |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.2f} |" for k, v in breakdown.items()]
    write_record(args.out, doc, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
