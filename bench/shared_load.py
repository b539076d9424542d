"""Do cityseg's thread pools hold up on a shared machine?  (issue 24 item 6, the benchmark)

On 2 vCPUs with other work running, torch eager once took 361 ms where it takes ~20 ms quiet
(OpenMP spinning on an oversubscribed machine), training ran ~10x slower, and the quickstart's
backend ratios measured the load rather than the backends.  This script makes the load itself —
``--busy`` competing processes (pure-Python busy loops, or numpy matmul loops) — and measures,
in interleaved rounds (quiet, loaded, loaded, quiet, ...) so drifting background load hits both
conditions alike:

- torch eager latency (``cityseg bench CKPT``, median end to end) loaded vs quiet: target <= 2x;
- one training epoch of a tiny preset (``cityseg train``, the epoch's own seconds from log.csv)
  loaded vs quiet: target <= 2.5x;
- the quickstart report's speed ratios — ONNX fp32, ONNX int8 and OpenVINO int8 over torch
  fp32, from one ``cityseg bench`` of the four artifacts the quickstart exports per network
  (the same :func:`benchmark` call, interleaved rounds) — loaded vs quiet: each within 25 %.

Every measurement runs as a user would run it: a fresh ``python -m cityseg_deploy`` process
with the default thread policy (no --threads), so what is measured is the policy.  The machine
(CPU model + flags, CPUs usable, thread environment) and the 1-minute load average before and
after every measurement are recorded next to the figures.

    python bench/shared_load.py [--rounds 3] [--busy 2] [--busy-kind python|matmul]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TARGETS = {"torch_latency_x": 2.0, "train_epoch_x": 2.5, "backend_ratio_change": 0.25}
ARTIFACTS = {"onnx fp32": ("onnx", "fp32", "dl.onnx"), "onnx int8": ("onnx", "int8", "dl_int8.onnx"),
             "openvino int8": ("openvino", "int8", "dl_ov_int8")}  # quickstart._artifact_plan
BUSY = {"python": "while True:\n    pass\n",
        "matmul": "import numpy as np\na = np.ones((512, 512))\nwhile True:\n    a @ a\n"}
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "CITYSEG_THREADS", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m cityseg_deploy ARGS`` as a user runs it; its failure stops the benchmark."""
    proc = subprocess.run([sys.executable, "-m", "cityseg_deploy", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"cityseg {' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc


class Load:
    """``n`` busy processes of ``kind`` while the block runs (each one thread: numpy's BLAS pool
    is pinned to 1 so the load is exactly ``n`` runnable threads)."""

    def __init__(self, n: int, kind: str) -> None:
        self.n, self.kind, self.procs = n, kind, []

    def __enter__(self) -> "Load":
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY[self.kind]], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                      for _ in range(self.n)]
        time.sleep(1.0)  # let them reach the run queue
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


def prepare(tmp: Path, size: tuple[int, int], train_size: tuple[int, int]) -> dict[str, Path]:
    """Synthetic data, a random DeepLabV3-small checkpoint, the quickstart's three exports of it,
    a tiny training recipe."""
    data = tmp / "data"
    cli("data", "synth", str(data), "--train", "8", "--val", "2", "--size", f"{train_size[0]}x{train_size[1]}")
    sys.path.insert(0, str(REPO))
    from cityseg_deploy.bench.fixtures import seeded_checkpoint

    ckpt = seeded_checkpoint(tmp / "dl.pt", "deeplabv3_small", size)
    artifacts = {}
    for label, (fmt, precision, name) in ARTIFACTS.items():
        artifacts[label] = tmp / name
        cli("export", str(ckpt), "--format", fmt, "--precision", precision, "--calib-data", str(data),
            "--out", str(artifacts[label]))
    recipe = tmp / "tiny.yaml"
    recipe.write_text(
        "model: unet_small\narch_args: {}\nlabel_set: cityscapes10\nepochs: 1\nbatch_size: 4\n"
        "optimizer: adam\nlr: 3.0e-3\nloss: ce+dice\n"
        f"train_size: [{train_size[0]}, {train_size[1]}]\nval_size: [{train_size[0]}, {train_size[1]}]\n"
        "augment: {scale: [1.0, 1.0], crop: null, hflip: 0.5, jitter: false}\namp: auto\nseed: 0\nworkers: 0\n")
    return {"data": data, "ckpt": ckpt, "artifacts": artifacts, "recipe": recipe}


def measure_bench(files: dict[str, Path], tmp: Path, iters: int) -> dict:
    """torch fp32 latency and each artifact's speed over it (median end to end), from one
    ``cityseg bench`` of the checkpoint and the three exports, as the quickstart report has them."""
    js = tmp / "bench.json"
    labels = list(files["artifacts"])
    cli("bench", str(files["ckpt"]), *(str(files["artifacts"][k]) for k in labels), "--warmup", "3",
        "--iters", str(iters), "--json", str(js), "--no-progress")
    doc = json.loads(js.read_text())
    rows = doc["results"]
    torch_ms = rows[0]["latency_ms"]["median"]
    return {"torch_ms": torch_ms,
            "ms": {label: row["latency_ms"]["median"] for label, row in zip(labels, rows[1:])},
            "speed_over_torch": {label: torch_ms / row["latency_ms"]["median"]
                                 for label, row in zip(labels, rows[1:])},
            "timing": doc["settings"].get("timing", "sequential"), "threads": doc["machine"].get("threads"),
            "runners": [row.get("runner") for row in rows]}


def measure_train(files: dict[str, Path], tmp: Path, k: int) -> dict:
    out = tmp / f"run{k}"
    cli("train", "--recipe", str(files["recipe"]), "--data", str(files["data"]), "--out", str(out),
        "--epochs", "1")
    with open(out / "log.csv") as fh:
        row = list(csv.DictReader(fh))[-1]
    return {"train_epoch_s": float(row["seconds"])}


def machine() -> dict:
    sys.path.insert(0, str(REPO))
    from cityseg_deploy.system.machine import machine_info

    info = machine_info()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": info.get("cpu"), "cpu_flags": info.get("cpu_flags"), "cpus_usable": cpus,
            "note": "the cityseg CLI sets OMP_WAIT_POLICY=PASSIVE itself where the environment does not",
            "cpu_count": os.cpu_count(), "versions": info.get("versions"),
            "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ}}


def summarise(rounds: list[dict]) -> dict:
    def med(cond: str, get) -> float:
        return statistics.median(get(r) for r in rounds if r["condition"] == cond)

    labels = list(rounds[0]["speed_over_torch"])
    quiet = {"torch_ms": med("quiet", lambda r: r["torch_ms"]),
             "train_epoch_s": med("quiet", lambda r: r["train_epoch_s"]),
             **{label: med("quiet", lambda r, k=label: r["speed_over_torch"][k]) for label in labels}}
    loaded = {"torch_ms": med("loaded", lambda r: r["torch_ms"]),
              "train_epoch_s": med("loaded", lambda r: r["train_epoch_s"]),
              **{label: med("loaded", lambda r, k=label: r["speed_over_torch"][k]) for label in labels}}
    change = {label: loaded[label] / quiet[label] - 1.0 for label in labels}
    figures = {"torch_latency_x": loaded["torch_ms"] / quiet["torch_ms"],
               "train_epoch_x": loaded["train_epoch_s"] / quiet["train_epoch_s"],
               "backend_ratio_change": change}
    verdict = {"torch_latency_x": figures["torch_latency_x"] <= TARGETS["torch_latency_x"],
               "train_epoch_x": figures["train_epoch_x"] <= TARGETS["train_epoch_x"],
               "backend_ratio_change": all(abs(v) <= TARGETS["backend_ratio_change"] for v in change.values())}
    return {"quiet": quiet, "loaded": loaded, "figures": figures, "targets": TARGETS, "pass": verdict}


def markdown(doc: dict) -> str:
    m, s = doc["machine"], doc["summary"]
    labels = list(doc["rounds"][0]["speed_over_torch"])
    lines = [f"# Shared-machine benchmark ({m['cpu']}, {m['cpus_usable']} usable CPUs)", "",
             f"Code: {doc['setup'].get('code') or 'this checkout'}.", "",
             f"CPU flags: {' '.join(m['cpu_flags'] or [])}", "",
             f"Load: {doc['setup']['busy']} busy {doc['setup']['busy_kind']} processes; "
             f"thread environment: {m['thread_env'] or 'none set'}; commands run with cityseg's "
             f"default thread policy (no --threads).  Rounds interleaved; 1-min load average "
             f"before/after each measurement.  Speed ratios: one `cityseg bench` of the "
             f"quickstart's four artifacts per measurement (timing: {doc['rounds'][0]['timing']}).", "",
             "| round | condition | torch fp32 ms | " + " | ".join(f"{k} / torch" for k in labels)
             + " | train epoch s | load avg before → after |",
             "| --- | --- | --- | " + " | ".join("---" for _ in labels) + " | --- | --- |"]
    for r in doc["rounds"]:
        lines.append(f"| {r['round']} | {r['condition']} | {r['torch_ms']:.1f} | "
                     + " | ".join(f"{r['speed_over_torch'][k]:.2f}" for k in labels)
                     + f" | {r['train_epoch_s']:.2f} | {r['load_before']:.2f} → {r['load_after']:.2f} |")
    f, t, ok = s["figures"], s["targets"], s["pass"]
    lines += ["", "| figure (medians) | measured | target | |", "| --- | --- | --- | --- |",
              f"| torch eager loaded / quiet | {f['torch_latency_x']:.2f}x | <= {t['torch_latency_x']}x | "
              f"{'pass' if ok['torch_latency_x'] else 'FAIL'} |",
              f"| train epoch loaded / quiet | {f['train_epoch_x']:.2f}x | <= {t['train_epoch_x']}x | "
              f"{'pass' if ok['train_epoch_x'] else 'FAIL'} |"]
    for k in labels:
        change = f["backend_ratio_change"][k]
        lines.append(f"| {k} / torch speed ratio, loaded vs quiet ({s['quiet'][k]:.2f} → "
                     f"{s['loaded'][k]:.2f}) | {100 * change:+.1f} % | within ±"
                     f"{100 * t['backend_ratio_change']:.0f} % | "
                     f"{'pass' if abs(change) <= t['backend_ratio_change'] else 'FAIL'} |")
    lines += ["", "Runners: " + ", ".join(f"`{x}`" for x in doc["rounds"][0]["runners"]) + ".", ""]
    quiet_load = [r["load_before"] for r in doc["rounds"] if r["condition"] == "quiet"]
    if quiet_load and max(quiet_load) > m["cpus_usable"]:
        lines += [f"**Background load**: the 1-min load average before the quiet measurements was "
                  f"{min(quiet_load):.1f}–{max(quiet_load):.1f} on {m['cpus_usable']} CPUs (other jobs on "
                  "this machine): 'quiet' was not quiet, and the loaded/quiet figures measure the "
                  f"{doc['setup']['busy']} added processes against that background, not against an idle machine.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="each round measures quiet and loaded")
    ap.add_argument("--busy", type=int, default=2, help="competing busy processes")
    ap.add_argument("--busy-kind", choices=sorted(BUSY), default="python")
    ap.add_argument("--size", default="128x256", help="inference size HxW")
    ap.add_argument("--train-size", default="64x128")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS / "shared_load")
    ap.add_argument("--label", default=None, help="which code ran (recorded in the title block)")
    args = ap.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    train_size = tuple(int(v) for v in args.train_size.split("x"))
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = prepare(tmp, size, train_size)
        for r in range(args.rounds):
            order = ("quiet", "loaded") if r % 2 == 0 else ("loaded", "quiet")
            for cond in order:
                row = {"round": r, "condition": cond, "load_before": os.getloadavg()[0]}
                with Load(args.busy if cond == "loaded" else 0, args.busy_kind):
                    row.update(measure_bench(files, tmp, args.iters))
                    row.update(measure_train(files, tmp, len(rounds)))
                row["load_after"] = os.getloadavg()[0]
                rounds.append(row)
                print(f"round {r} {cond}: torch {row['torch_ms']:.1f} ms, speed over torch "
                      + ", ".join(f"{k} {v:.2f}" for k, v in row["speed_over_torch"].items())
                      + f", train epoch {row['train_epoch_s']:.2f} s, load {row['load_before']:.2f} → "
                      f"{row['load_after']:.2f}", flush=True)
    doc = {"machine": machine(), "setup": {"code": args.label, "busy": args.busy, "busy_kind": args.busy_kind,
                                           "size": list(size), "train_size": list(train_size),
                                           "iters": args.iters, "model": "deeplabv3_small (random init)",
                                           "train_recipe": "unet_small, 8 images, batch 4, 1 epoch"},
           "rounds": rounds, "summary": summarise(rounds)}
    from cityseg_deploy.bench.records import write_record

    write_record(args.out, doc, markdown(doc))
    print(json.dumps(doc["summary"]["figures"]), json.dumps(doc["summary"]["pass"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
