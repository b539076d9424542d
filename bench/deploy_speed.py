"""Do ``predict`` and ``segment`` run at the speed of the deploy folder's runner?  (issue 24)

Target: on a CPU, ``cityseg predict`` (images in, label PNGs out) and ``cityseg segment`` (a
clip in, label PNGs out) with a deploy folder reach at least 0.9 of the speed ``cityseg bench``
measures for the artifact the folder chose.  ``bench`` times the runner alone on an image
already in memory; the two commands also decode every input and encode and write every PNG, so
the ratio says how much of that work is hidden behind the model (predict decodes ahead in a
thread and writes through a small pool; segment runs its stages in threads).

Setup: synthetic data (``data synth``), DeepLabV3-small with random weights (speed does not
depend on them), ``cityseg optimize`` choosing among a few CPU candidates, and an mp4v clip of
the val images.  Then in interleaved rounds (the command order rotates, so drifting background
load hits all three alike), each as a fresh process the way a user types it:

- ``cityseg bench DEPLOY --json J``: FPS = 1000 / median end-to-end ms (mean-based FPS kept too);
- ``cityseg predict DEPLOY --images 'VAL/*/*.png' --format trainIds --json J``: its img/s
  (first decode to last PNG on disk, model load excluded);
- ``cityseg segment CLIP --model DEPLOY --labels-dir L``: the pipeline FPS of its ``speed:`` line.

The ``runner:`` line of every command is recorded (they must name the same runner), with the
machine (CPU model and flags, CPUs usable) and the 1-minute load average before and after each
command.  Results: bench/results/<name>.{md,json}.

Where the time goes (in this process, after the rounds): the runner's median ms (default threads
and 1 thread) and how many cores it keeps busy, the CPU ms of one image's decode and of one
trainIds PNG's render + write.  From them, the ceiling of predict / bench on this machine if
the decode and PNG work hid perfectly in the CPU the runner leaves idle:
``m / (m + max(0, h - (cpus - busy) * m) / cpus)`` (m: model ms, h: helper CPU ms).

    python bench/deploy_speed.py [--rounds 3] [--val 48] [--size 128x256]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
COMMANDS = ("bench", "predict", "segment")
SPEED_LINE = re.compile(r"pipeline ([\d.]+) FPS")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def cli(*args: str, timeout: float = 1800) -> str:
    """``python -m cityseg_deploy ARGS`` as a user runs it; its stdout.  A failure stops the run."""
    proc = subprocess.run([sys.executable, "-m", "cityseg_deploy", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"cityseg {' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def runner_line(stdout: str) -> str | None:
    return next((ln[len("runner: "):].strip() for ln in stdout.splitlines() if ln.startswith("runner: ")),
                None)


def prepare(tmp: Path, size: tuple[int, int], n_train: int, n_val: int, candidates: str) -> dict[str, Path]:
    """Synthetic data, a seeded DeepLabV3-small checkpoint, its deploy folder, a clip of the val images."""
    sys.path.insert(0, str(REPO))
    import cv2

    from cityseg_deploy.bench.fixtures import seeded_checkpoint

    data = tmp / "data"
    cli("data", "synth", str(data), "--train", str(n_train), "--val", str(n_val),
        "--size", f"{size[0]}x{size[1]}")
    ckpt = seeded_checkpoint(tmp / "dl.pt", "deeplabv3_small", size)
    deploy = tmp / "deploy"
    optimize = cli("optimize", str(ckpt), "--data", str(data), "--out", str(deploy),
                   "--candidates", candidates, "--no-progress")
    val = sorted((data / "leftImg8bit" / "val").glob("*/*.png"))
    clip = tmp / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (size[1], size[0]))
    for image in val:
        writer.write(cv2.imread(str(image)))
    writer.release()
    chosen = next((ln for ln in optimize.splitlines() if ln.startswith("deploy: ")), "")
    return {"data": data, "deploy": deploy, "clip": clip, "val_glob": data / "leftImg8bit" / "val" / "*" / "*.png",
            "chosen": chosen, "images": len(val)}


def measure(command: str, files: dict, tmp: Path, tag: str, iters: int) -> dict:
    """One command as a fresh process: its speed (images or frames per second) and runner line."""
    if command == "bench":
        js = tmp / f"bench_{tag}.json"
        out = cli("bench", str(files["deploy"]), "--json", str(js), "--iters", str(iters), "--no-progress")
        (row,) = json.loads(js.read_text())["results"]
        lat = row["latency_ms"]
        return {"fps": 1000.0 / lat["median"], "fps_mean": 1000.0 / lat["mean"],
                "median_ms": lat["median"], "runner": row.get("runner") or runner_line(out),
                "artifact": f"{row['backend']} {row['precision']}"}
    if command == "predict":
        js = tmp / f"predict_{tag}.json"
        out = cli("predict", str(files["deploy"]), "--images", str(files["val_glob"]), "--out",
                  str(tmp / f"pred_{tag}"), "--format", "trainIds", "--json", str(js), "--no-progress")
        doc = json.loads(js.read_text())
        return {"fps": doc["images_per_s"], "seconds": doc["seconds"], "images": doc["written"],
                "runner": runner_line(out), "line": out.strip().splitlines()[-2]}
    out = cli("segment", str(files["clip"]), "--model", str(files["deploy"]), "--labels-dir",
              str(tmp / f"labels_{tag}"), "--no-progress")
    speed = next(ln for ln in out.splitlines() if ln.startswith("speed: "))
    return {"fps": float(SPEED_LINE.search(speed).group(1)), "runner": runner_line(out), "line": speed}


def profile(files: dict, reps: int = 3) -> dict:
    """Per-image costs of the three kinds of work predict does, and the CPU-bound ceiling."""
    import glob
    import resource
    import shutil

    from cityseg_deploy import runtime
    from cityseg_deploy.evaluation.predict import output_label_set, write_prediction
    from cityseg_deploy.fileio import read_rgb

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def model(threads: int | None) -> tuple[float, float]:
        seg = runtime.load(files["deploy"], threads=threads)
        for frame in frames[:3]:
            seg.run([frame])
        times, c0, w0 = [], cpu(), time.perf_counter()
        for _ in range(reps):
            for frame in frames:
                t = time.perf_counter()
                seg.run([frame])
                times.append(time.perf_counter() - t)
        busy = (cpu() - c0) / (time.perf_counter() - w0)
        return 1e3 * statistics.median(times), busy

    paths = sorted(glob.glob(str(files["val_glob"])))
    frames = [read_rgb(p) for p in paths]
    model_ms, busy = model(None)
    model_1_ms, _ = model(1)
    c0 = cpu()
    for _ in range(reps):
        for p in paths:
            read_rgb(p)
    decode_ms = 1e3 * (cpu() - c0) / (reps * len(paths))
    seg = runtime.load(files["deploy"])
    labels = [seg.run([f])[0][0] for f in frames]
    label_set = output_label_set(seg.meta, "trainIds", where="profile")
    folder = Path(tempfile.mkdtemp(prefix="deploy_speed_png"))
    c0 = cpu()
    for r in range(reps):
        for k, (lab, frame) in enumerate(zip(labels, frames)):
            write_prediction(folder / f"{r}_{k}.png", lab, frame, label_set, "trainIds")
    png_ms = 1e3 * (cpu() - c0) / (reps * len(paths))
    shutil.rmtree(folder)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    helpers = decode_ms + png_ms
    excess = max(0.0, helpers - max(0.0, cpus - busy) * model_ms)
    return {"model_ms": model_ms, "model_1_thread_ms": model_1_ms, "model_busy_cores": busy,
            "decode_cpu_ms": decode_ms, "png_cpu_ms": png_ms, "cpus": cpus,
            "ceiling_predict_over_bench": model_ms / (model_ms + excess / cpus)}


def machine() -> dict:
    sys.path.insert(0, str(REPO))
    from cityseg_deploy.system.machine import machine_info

    info = machine_info()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": info.get("cpu"), "cpu_flags": info.get("cpu_flags"), "cpus_usable": cpus,
            "cpu_count": os.cpu_count(), "versions": info.get("versions")}


def summarise(rounds: list[dict], target: float) -> dict:
    med = {c: statistics.median(r[c]["fps"] for r in rounds) for c in COMMANDS}
    bench_mean = statistics.median(r["bench"]["fps_mean"] for r in rounds)
    ratios = {c: med[c] / med["bench"] for c in ("predict", "segment")}
    paired = {c: statistics.median(r[c]["fps"] / r["bench"]["fps"] for r in rounds)
              for c in ("predict", "segment")}
    runners = {r[c]["runner"] for r in rounds for c in COMMANDS}
    return {"median_fps": med, "bench_fps_from_mean_ms": bench_mean, "ratios": ratios,
            "paired_ratios": paired, "ratios_vs_bench_mean": {c: med[c] / bench_mean for c in ratios},
            "target": target, "pass": {c: ratios[c] >= target for c in ratios},
            "same_runner": len(runners) == 1, "runners": sorted(r or "?" for r in runners)}


def markdown(doc: dict) -> str:
    m, s, st = doc["machine"], doc["summary"], doc["setup"]
    lines = [f"# predict / segment vs bench on a deploy folder ({m['cpu']}, {m['cpus_usable']} usable CPUs)", "",
             f"Code: {st.get('code') or 'this checkout'}.  Model: {st['model']} at {st['size'][0]}x{st['size'][1]}, "
             f"deploy folder by `cityseg optimize --candidates {st['candidates']}`: "
             f"{st['chosen'].split(' → ', 1)[-1]}", "",
             f"CPU flags: {' '.join(m['cpu_flags'] or [])}", "",
             f"{st['images']} val images (predict: `--images`, trainIds PNGs; segment: an mp4v clip of the "
             f"same images, `--labels-dir`); bench: `--iters {st['iters']}`, FPS = 1000 / median ms.  "
             "Fresh CLI processes, default threads, rounds interleaved (order rotates); 1-min load "
             "average before → after each command.", "",
             "| round | order | bench FPS (median ms) | predict img/s | segment FPS | predict / bench | segment / bench | load avg (bench; predict; segment) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in doc["rounds"]:
        b = r["bench"]
        loads = "; ".join(f"{r[c]['load_before']:.2f} → {r[c]['load_after']:.2f}" for c in COMMANDS)
        lines.append(f"| {r['round']} | {', '.join(r['order'])} | {b['fps']:.1f} ({b['median_ms']:.2f}) | "
                     f"{r['predict']['fps']:.1f} | {r['segment']['fps']:.1f} | "
                     f"{r['predict']['fps'] / b['fps']:.2f} | {r['segment']['fps'] / b['fps']:.2f} | {loads} |")
    med, ok = s["median_fps"], s["pass"]
    lines += ["", "| figure (medians over rounds) | measured | target | |", "| --- | ---: | ---: | --- |"]
    for c in ("predict", "segment"):
        lines.append(f"| {c} / bench | {s['ratios'][c]:.2f} ({med[c]:.1f} / {med['bench']:.1f}) | "
                     f">= {s['target']} | {'pass' if ok[c] else 'FAIL'} |")
    lines += ["", f"Paired (per-round) ratios, median: predict {s['paired_ratios']['predict']:.2f}, "
              f"segment {s['paired_ratios']['segment']:.2f}.  Against bench's mean latency "
              f"({s['bench_fps_from_mean_ms']:.1f} FPS, which counts slow iterations as the two "
              f"commands' wall clocks do): predict {s['ratios_vs_bench_mean']['predict']:.2f}, "
              f"segment {s['ratios_vs_bench_mean']['segment']:.2f}.", "",
              f"Runner line of every command: {', '.join(f'`{r}`' for r in s['runners'])}"
              + (" (the same in all)." if s["same_runner"] else " — **they differ**."), ""]
    p = doc.get("profile")
    if p:
        lines += ["## Where the time goes (in-process, per image)", "",
                  f"- runner: {p['model_ms']:.2f} ms median with its default threads "
                  f"({p['model_1_thread_ms']:.2f} ms on 1 thread), keeping {p['model_busy_cores']:.2f} of "
                  f"{p['cpus']} CPUs busy;",
                  f"- decode of one image: {p['decode_cpu_ms']:.2f} ms of CPU; render + write of one "
                  f"trainIds PNG: {p['png_cpu_ms']:.2f} ms of CPU;",
                  f"- so if that work hid perfectly in the CPU the runner leaves idle, predict / bench "
                  f"could reach at most {p['ceiling_predict_over_bench']:.2f} on this machine.", ""]
    busy = [r[c]["load_before"] for r in doc["rounds"] for c in COMMANDS]
    if busy and max(busy) > 1.0 + 0.25 * m["cpus_usable"]:  # the commands themselves count ~1
        lines += [f"**Background load**: the 1-min load average before the commands was "
                  f"{min(busy):.2f}–{max(busy):.2f} on {m['cpus_usable']} CPUs (this benchmark's own "
                  "commands count about 1; the rest is other jobs on this machine, with which every "
                  "command shared the CPUs).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="each round runs bench, predict and segment once")
    ap.add_argument("--size", default="128x256", help="image and model size HxW")
    ap.add_argument("--train", type=int, default=8, help="synthetic train scenes (int8 calibration)")
    ap.add_argument("--val", type=int, default=48, help="synthetic val scenes (what predict and segment run on)")
    ap.add_argument("--candidates", default="onnx_int8,openvino_int8",
                    help="optimize's candidates besides torch fp32 (always timed)")
    ap.add_argument("--iters", type=int, default=30, help="bench iterations")
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--out", type=Path, default=RESULTS / "deploy_speed")
    ap.add_argument("--label", default=None, help="which code ran (recorded in the title block)")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="skip the in-process per-image cost breakdown")
    args = ap.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = prepare(tmp, size, args.train, args.val, args.candidates)
        print(files["chosen"], flush=True)
        for r in range(args.rounds):
            order = COMMANDS[r % 3:] + COMMANDS[:r % 3]
            row: dict = {"round": r, "order": list(order)}
            for command in order:
                before = os.getloadavg()[0]
                row[command] = measure(command, files, tmp, f"{r}", args.iters)
                row[command].update(load_before=before, load_after=os.getloadavg()[0])
            rounds.append(row)
            print(f"round {r}: bench {row['bench']['fps']:.1f} FPS, predict {row['predict']['fps']:.1f} "
                  f"img/s, segment {row['segment']['fps']:.1f} FPS; load "
                  + ", ".join(f"{row[c]['load_before']:.2f}" for c in order), flush=True)
        costs = profile(files) if args.profile else None
    doc = {"machine": machine(),
           "setup": {"code": args.label, "size": list(size), "train": args.train, "images": files["images"],
                     "candidates": args.candidates, "iters": args.iters, "chosen": files["chosen"],
                     "model": "deeplabv3_small (random init, seed 0)"},
           "rounds": rounds, "summary": summarise(rounds, args.target), "profile": costs}
    from cityseg_deploy.bench.records import write_record

    write_record(args.out, doc, markdown(doc))
    print(json.dumps(doc["summary"]["ratios"]), json.dumps(doc["summary"]["pass"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
