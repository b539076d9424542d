"""How long does ``cityseg optimize`` take on the small presets, and what does it pick?  (issue 24)

Target: ≤ 3 minutes on 2 cores for one network (every CPU candidate that fits the machine).
One run per network, on the quickstart's data size (48 train / 12 val scenes at 128x256) and a
random-init checkpoint of each small preset (speed, not accuracy, is measured here: with random
weights every candidate's mIoU is ~0, so the picks say nothing about accuracy).  Recorded per
network: wall and CPU seconds, the seconds of export / check / timing, the 1-minute load average
at start and end (this machine is shared: other jobs change the wall time, CPU seconds much
less), the pick and its speed-up over torch fp32 measured in the same interleaved run.

    python bench/optimize_cpu.py [--work DIR] [--models deeplabv3_small,unet_small,denseaspp_small]

Writes bench/results/optimize_cpu.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=None, help="folder for data, checkpoints and deploy folders")
    ap.add_argument("--models", default="deeplabv3_small,unet_small,denseaspp_small")
    ap.add_argument("--size", default="128x256")
    ap.add_argument("--out", default=str(HERE / "results" / "optimize_cpu"))
    args = ap.parse_args(argv)

    from cityseg_deploy.system.threads import yield_when_idle

    yield_when_idle()  # as the CLI does before torch is imported (OMP_WAIT_POLICY=PASSIVE)
    from cityseg_deploy.bench.records import write_record
    from cityseg_deploy.data.synth import synthesize
    from cityseg_deploy.bench.fixtures import seeded_checkpoint
    from cityseg_deploy.optimize import optimize
    from cityseg_deploy.system.machine import load_average, machine_info, machine_line

    h, w = (int(v) for v in args.size.split("x"))
    work = Path(args.work or tempfile.mkdtemp(prefix="cityseg-optimize-bench-"))
    data = synthesize(work / "data", n_train=48, n_val=12, size=(h, w), seed=0)
    runs = []
    for arch in [m.strip() for m in args.models.split(",") if m.strip()]:
        ckpt = seeded_checkpoint(work / f"{arch}.pt", arch, (h, w))
        out = work / f"{arch}_deploy"
        load_start = load_average()
        wall, cpu = time.perf_counter(), time.process_time()
        record = optimize(ckpt, data, out=out, progress=False, log=lambda _m: None)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        runs.append({"network": arch, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                     "stages_s": record["seconds"], "load_start": load_start, "load_end": load_average(),
                     "pick": record["pick"]["name"], "speedup": record["pick"]["speedup"],
                     "candidates": {c["name"]: {"status": c["status"], "reason": c.get("reason"),
                                                "median_ms": (c.get("latency_ms") or {}).get("median"),
                                                "export_s": (c.get("export") or {}).get("seconds")}
                                    for c in record["candidates"]}})
        print(f"{arch}: {wall:.0f} s wall, {cpu:.0f} s CPU, pick {record['pick']['name']} "
              f"({record['pick']['speedup']}x), load {load_start} → {load_average()}", flush=True)
    machine = machine_info(None)
    doc = {"machine": machine, "size": [h, w], "train": 48, "val": 12, "runs": runs,
           "target": "≤ 180 s wall on 2 cores per network"}
    md = [f"# cityseg optimize on the small presets ({h}x{w}, 48 train / 12 val, CPU)", "",
          f"Machine: {machine_line(machine)}.", "",
          "Shared machine: other helpers' jobs ran alongside (load averages below are the 1/5/15-min "
          "figures at each run's start and end, on 2 cores); wall time follows the load, CPU "
          "seconds (this process, all its threads) much less. Random-init checkpoints: speed only.", "",
          "| network | wall s | CPU s | export / check / timing s | load start → end | pick | x torch fp32 | target ≤ 180 s |",
          "| --- | ---: | ---: | --- | --- | --- | ---: | --- |"]
    for r in runs:
        st = r["stages_s"]
        md.append(f"| {r['network']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | "
                  f"{st['export']:.0f} / {st['check']:.0f} / {st['timing']:.0f} | "
                  f"{r['load_start']} → {r['load_end']} | {r['pick']} | {r['speedup']} | "
                  f"{'met' if r['wall_s'] <= 180 else 'not met'} |")
    md += ["", "Per candidate (median ms end to end, interleaved; export seconds):", ""]
    for r in runs:
        md.append(f"- {r['network']}: " + "; ".join(
            f"{n} {c['median_ms']:.1f} ms" + (f" (export {c['export_s']:.0f} s)" if c["export_s"] else "")
            if c["median_ms"] is not None else f"{n} {c['status']}: {c['reason']}"
            for n, c in r["candidates"].items()))
    write_record(args.out, doc, "\n".join(md))
    print(f"wrote {args.out}.json / .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
