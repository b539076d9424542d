"""onnxruntime's intra-op pool settings, quiet and under generated load (issue 24 item 6).

Why: with the OpenMP pools told to yield (``OMP_WAIT_POLICY=PASSIVE``, the CLI's default),
onnxruntime's own pool still spun between operators (its ``session.intra_op.allow_spinning``
defaults to on): on 2 CPUs with two busy processes an int8 DeepLabV3-small frame took ~147 ms
where it took ~52 ms without them (bench/results/shared_load_h25_only.md), so the quickstart's
backend ratios moved with the load.  The runner now follows the same wait policy (spinning off
under PASSIVE).  This script times both settings through the real runner (``runtime.load``; the
policy is read when the session is made), interleaved, with ``--busy`` processes and without:
spinning on; spinning off; spinning off with ``session.dynamic_block_base`` 4 (the runner's
default under PASSIVE: a loop's work in shrinking blocks, so a thread the OS runs late holds up
less of it).

    python bench/ort_spinning_ab.py [--busy 2] [--rounds 4]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build(tmp: Path, size: tuple[int, int]) -> Path:
    from cityseg_deploy.bench.fixtures import seeded_checkpoint
    from cityseg_deploy.data.synth import synthesize
    from cityseg_deploy.export import export

    ckpt = seeded_checkpoint(tmp / "dl.pt", "deeplabv3_small", size)
    data = synthesize(tmp / "data", n_train=4, n_val=2, size=(64, 128), seed=0)
    return export(ckpt, format="onnx", precision="int8", calib_data=data, out=tmp / "dl_int8.onnx",
                  log=None).path


SETTINGS = {"spinning on": (True, 0), "spinning off": (False, 0), "spinning off, dynamic blocks 4": (False, 4)}


def load(path: Path, setting: str, threads: int):
    from cityseg_deploy import runtime

    spin, block = SETTINGS[setting]
    os.environ["OMP_WAIT_POLICY"] = "ACTIVE" if spin else "PASSIVE"
    seg = runtime.load(path, threads=threads, dynamic_block_base=block)
    assert seg.describe()["spinning"] is spin and seg.describe()["dynamic_block_base"] == block, seg.describe()
    return seg


def median_ms(seg, image, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        seg.predict(image)
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busy", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", default="128x256")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ort_spinning_ab")
    args = ap.parse_args(argv)
    import numpy as np

    from cityseg_deploy.system.machine import machine_info

    size = tuple(int(v) for v in args.size.split("x"))
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        onnx = build(Path(tmp), size)
        segs = {name: load(onnx, name, args.threads) for name in SETTINGS}
        for seg in segs.values():
            median_ms(seg, image, 2)
        rows = []
        for busy in (0, args.busy):
            procs = [subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"]) for _ in range(busy)]
            time.sleep(1.0 if busy else 0.0)
            try:
                names = list(SETTINGS)
                for r in range(args.rounds):
                    k = r % len(names)
                    for name in names[k:] + names[:k]:  # rotating order
                        rows.append({"busy": busy, "round": r, "setting": name,
                                     "load_before": os.getloadavg()[0],
                                     "median_ms": median_ms(segs[name], image, args.iters)})
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
    summary = {f"busy={b} {name}":
               statistics.median(r["median_ms"] for r in rows if r["busy"] == b and r["setting"] == name)
               for b in (0, args.busy) for name in SETTINGS}
    info = machine_info()
    doc = {"machine": {"cpu": info.get("cpu"), "cpu_flags": info.get("cpu_flags"),
                       "cpus_usable": len(os.sched_getaffinity(0))},
           "setup": {"model": "deeplabv3_small int8 ONNX (random init)", "size": list(size),
                     "threads": args.threads, "iters": args.iters}, "rows": rows, "summary_ms": summary}
    loads = [r["load_before"] for r in rows]
    md = [f"# onnxruntime pool settings ({doc['machine']['cpu']}, {doc['machine']['cpus_usable']} CPUs)", "",
          f"CPU flags: {' '.join(doc['machine']['cpu_flags'] or [])}; {doc['setup']['model']} at "
          f"{size[0]}x{size[1]}, {args.threads} threads, median of {args.iters} predict() calls per "
          f"round, {args.rounds} interleaved rounds per condition; 1-min load average "
          f"{min(loads):.1f}–{max(loads):.1f} (background jobs included).", "",
          "| condition | " + " | ".join(f"{name} (ms)" for name in SETTINGS) + " |",
          "| --- |" + " --- |" * len(SETTINGS)]
    for b in (0, args.busy):
        md.append(f"| {b} busy processes | " + " | ".join(f"{summary[f'busy={b} {name}']:.1f}"
                                                          for name in SETTINGS) + " |")
    from cityseg_deploy.bench.records import write_record

    write_record(args.out, doc, "\n".join(md))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
