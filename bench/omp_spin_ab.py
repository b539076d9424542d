"""How long OpenMP threads spin before sleeping: torch eager latency, quiet and under load.

Why: with ``OMP_WAIT_POLICY=PASSIVE`` (spin count 0) torch eager on 2 CPUs ran *slower* on a
quiet machine than with two busy processes beside it (DeepLabV3-small 128x256: ~75-92 ms vs
~35-40 ms, bench/results/shared_load.md): every parallel region wakes a sleeping worker (futex,
idle-state exit), hundreds of times per image.  libgomp's default (spin ~3 ms) was the opposite
failure (a spinning worker holds a CPU a competing process needs: 17-30x slower under load).
``GOMP_SPINCOUNT`` sets the spin explicitly (it overrides the wait policy); this script times
``cityseg bench CKPT`` (its own process per run, default threads) for a few spin counts,
interleaved, with ``--busy`` busy processes and without.

    python bench/omp_spin_ab.py [--rounds 3] [--busy 2]
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
VARIANTS = {"passive (spin 0)": {"OMP_WAIT_POLICY": "PASSIVE"},
            "spin 10k": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"},
            "spin 100k": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "100000"}}


def bench(ckpt: Path, js: Path, env_extra: dict[str, str], iters: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO), **env_extra)
    for k in ("GOMP_SPINCOUNT",):
        if k not in env_extra:
            env.pop(k, None)
    subprocess.run([sys.executable, "-m", "cityseg_deploy", "bench", str(ckpt), "--warmup", "3",
                    "--iters", str(iters), "--json", str(js), "--no-progress"], env=env, cwd=REPO,
                   check=True, capture_output=True)
    return json.loads(js.read_text())["results"][0]["latency_ms"]["median"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--size", default="128x256")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "omp_spin_ab")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from cityseg_deploy.bench.fixtures import seeded_checkpoint
    from cityseg_deploy.system.machine import machine_info

    size = tuple(int(v) for v in args.size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = seeded_checkpoint(tmp / "dl.pt", "deeplabv3_small", size)
        names = list(VARIANTS)
        for r in range(args.rounds):
            for busy in ((0, args.busy) if r % 2 == 0 else (args.busy, 0)):
                procs = [subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"])
                         for _ in range(busy)]
                time.sleep(1.0 if busy else 0.0)
                try:
                    for name in (names if r % 2 == 0 else names[::-1]):
                        load = os.getloadavg()[0]
                        ms = bench(ckpt, tmp / "b.json", VARIANTS[name], args.iters)
                        rows.append({"round": r, "busy": busy, "variant": name, "median_ms": ms,
                                     "load_before": load})
                        print(f"round {r} busy {busy} {name}: {ms:.1f} ms (load {load:.1f})", flush=True)
                finally:
                    for p in procs:
                        p.kill()
                        p.wait()
    summary = {f"{name}, busy {b}": statistics.median(x["median_ms"] for x in rows
                                                      if x["variant"] == name and x["busy"] == b)
               for name in VARIANTS for b in (0, args.busy)}
    info = machine_info()
    doc = {"machine": {"cpu": info.get("cpu"), "cpu_flags": info.get("cpu_flags"),
                       "cpus_usable": len(os.sched_getaffinity(0))},
           "setup": {"model": "deeplabv3_small (random init)", "size": list(size), "iters": args.iters,
                     "variants": VARIANTS, "busy": args.busy}, "rows": rows, "summary_ms": summary}
    loads = [x["load_before"] for x in rows]
    md = [f"# OpenMP spin before sleep: torch eager ({doc['machine']['cpu']}, "
          f"{doc['machine']['cpus_usable']} CPUs)", "",
          f"CPU flags: {' '.join(doc['machine']['cpu_flags'] or [])}; deeplabv3_small {size[0]}x{size[1]}, "
          f"`cityseg bench` median of {args.iters} per run, own process per run, default threads; "
          f"{args.rounds} interleaved rounds; 1-min load average {min(loads):.1f}–{max(loads):.1f} "
          "(background jobs included).", "", "| variant | quiet (ms) | "
          f"{args.busy} busy processes (ms) | loaded / quiet |", "| --- | --- | --- | --- |"]
    for name in VARIANTS:
        q, l = summary[f"{name}, busy 0"], summary[f"{name}, busy {args.busy}"]
        md.append(f"| {name} | {q:.1f} | {l:.1f} | {l / q:.2f} |")
    from cityseg_deploy.bench.records import write_record

    write_record(args.out, doc, "\n".join(md))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
