"""Single-process ``cityseg predict`` of an ONNX int8 model: default threads vs ``OMP_NUM_THREADS=1``.

    python3 bench/threads_ab.py [--rounds 5] [--images 48] [--size 128x256] [--work DIR]

Why: with onnxruntime doing the work, torch's OpenMP pool in the same process should neither
spin nor run at full width (system/threads.py: ``OMP_WAIT_POLICY=PASSIVE`` at the CLI entry,
torch held at 1 thread while an onnxruntime/OpenVINO CPU runner is open).  If it did, the run
with ``OMP_NUM_THREADS=1`` (which silences torch's pool from the start) would be clearly faster;
the target is the default within 5 % of it.  The two settings run interleaved (A B A B ...) as
separate processes, so a neighbour's load falls on both alike; the load average is recorded
before and after each run.  Writes bench/results/threads_ab.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent


def _prepare(work: Path, n_images: int, size: tuple[int, int]) -> tuple[Path, Path]:
    from cityseg_deploy.data.synth import synthesize
    from cityseg_deploy.export import export
    from cityseg_deploy.bench.fixtures import seeded_checkpoint

    data = work / "data"
    if not (data / "leftImg8bit").is_dir():
        synthesize(data, n_train=8, n_val=n_images, size=size, seed=0)
    model = work / "m_int8.onnx"
    if not model.is_file():
        seeded_checkpoint(work / "m.pt", "unet_small", size)
        export(work / "m.pt", format="onnx", precision="int8", out=model, calib_data=data,
               calib_images=8, verify=False, log=None)
    return model, data / "leftImg8bit" / "val"


def _run(model: Path, images: Path, env: dict[str, str]) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cityseg_deploy", "predict", str(model), "--images",
                        f"{images}/*/*.png", "--out", out, "--no-progress"], env=env, check=True,
                       capture_output=True, cwd=tempfile.gettempdir())  # PYTHONPATH picks the code
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", default="128x256")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "threads_ab"))
    ap.add_argument("--before", default=None,
                    help="a checkout of the code before system/threads.py: its default run joins the rounds")
    args = ap.parse_args(argv)

    from cityseg_deploy.bench.records import write_record
    from cityseg_deploy.system.machine import load_average, machine_info, machine_line
    from cityseg_deploy.system.threads import available_cpus, default_threads

    size = tuple(int(v) for v in args.size.split("x"))
    work = Path(args.work or tempfile.mkdtemp(prefix="cityseg-threads-ab-"))
    model, images = _prepare(work, args.images, size)
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    base["PYTHONPATH"] = str(ROOT)
    settings = {"default": base, "OMP_NUM_THREADS=1": {**base, "OMP_NUM_THREADS": "1"}}
    if args.before:
        settings["default, code before"] = {**base, "PYTHONPATH": str(Path(args.before).resolve())}
    _run(model, images, base)  # warm the page cache once
    runs: list[dict] = []
    for r in range(args.rounds):
        order = list(settings) if r % 2 == 0 else list(reversed(settings))  # A B C, C B A, ...
        for name in order:
            before = load_average()
            seconds = _run(model, images, settings[name])
            runs.append({"round": r, "setting": name, "seconds": round(seconds, 3),
                         "load_before": before, "load_after": load_average()})
    med = {n: statistics.median(x["seconds"] for x in runs if x["setting"] == n) for n in settings}
    def ratio_of(name: str) -> float:
        return statistics.median(
            next(x["seconds"] for x in runs if x["round"] == r and x["setting"] == name)
            / next(x["seconds"] for x in runs if x["round"] == r and x["setting"] == "OMP_NUM_THREADS=1")
            for r in range(args.rounds))

    ratio = ratio_of("default")
    machine = machine_info()
    doc = {"machine": machine, "available_cpus": available_cpus(), "default_threads": default_threads(),
           "model": "unet_small onnx int8 (tensorrt Q/DQ layout), onnxruntime CPU",
           "images": args.images, "size": list(size), "rounds": args.rounds, "runs": runs,
           "median_s": med, "median_ratio_default_over_omp1": round(ratio, 4),
           "within_5_percent": ratio <= 1.05}
    if args.before:
        doc["median_ratio_before_over_omp1"] = round(ratio_of("default, code before"), 4)
    lines = ["# predict, ONNX int8: default threads vs OMP_NUM_THREADS=1", "",
             f"Machine: {machine_line(machine)}; available CPUs {available_cpus()}, default threads "
             f"{default_threads()}", "",
             f"`cityseg predict m_int8.onnx --images ({args.images} frames {size[0]}x{size[1]})` as a "
             f"whole process (start-up included), {args.rounds} rounds, the settings interleaved "
             "(order reversed every other round).", "",
             "| setting | median s | runs (s) | load average before each run |", "|---|---:|---|---|"]
    for n in settings:
        mine = [x for x in runs if x["setting"] == n]
        secs = ", ".join(f"{x['seconds']:.2f}" for x in mine)
        loads = "; ".join(str(x["load_before"][0]) if x["load_before"] else "-" for x in mine)
        lines.append(f"| {n} | {med[n]:.2f} | {secs} | {loads} |")
    lines += ["", f"Median of per-round ratios default / OMP_NUM_THREADS=1: **{ratio:.3f}** "
              f"({'within' if doc['within_5_percent'] else 'NOT within'} the target: at most 1.05)."]
    if args.before:
        lines.append(f"Code before system/threads.py, default / OMP_NUM_THREADS=1: "
                     f"{doc['median_ratio_before_over_omp1']:.3f}.")
    lines += ["", "Whole-process wall time on a shared 2-CPU machine: the load average column says how "
              "busy it was; compare settings within a round, not across runs of this file."]
    json_path, md_path = write_record(args.out, doc, "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
