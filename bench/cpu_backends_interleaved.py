"""The CPU backend suite measured round-robin: one iteration of every row per round.

    python3 bench/cpu_backends_interleaved.py [--rounds 5] [--work DIR]

Why: ``cityseg bench --suite`` times each row in a block, one row after another.  On a machine
shared with other jobs (2 cores, load average 2–4 while this project's suites ran), a row timed
while a neighbour compiled got 1.5–2x slower than one timed a minute later: the same suite gave
onnxruntime int8 1.35x and then 2.89x torch eager.  Interleaving puts every row under the same
background load, and the ratio of each round (row / reference in that round) cancels slow drifts;
the median over rounds is reported next to the ratio of medians.  Same artifacts (the suite's
``work`` cache), same runners (project Segmenter, plain OpenVINO) as bench/cpu_backends.yaml.
Writes bench/results/cpu_backends_interleaved.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default=str(HERE / "cpu_backends.yaml"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", default=None, help="the suite's artifact cache (built if missing)")
    ap.add_argument("--out", default=str(HERE / "results" / "cpu_backends_interleaved"))
    args = ap.parse_args(argv)

    from cityseg_deploy.bench.benchmark import _images, _load, model_flops
    from cityseg_deploy.bench.gemm import sgemm_gflops
    from cityseg_deploy.bench.records import write_record
    from cityseg_deploy.system.machine import load_average, machine_info, machine_line
    from cityseg_deploy.bench.suite import load_suite, prepare
    from cityseg_deploy.system.timing import StageTimer

    suite = load_suite(args.suite)
    work = Path(os.path.expanduser(args.work or suite.get("work") or f"~/.cache/cityseg/bench/{suite['name']}"))
    paths = prepare(suite, work)
    size = tuple(suite["model"].get("size", (512, 1024)))
    images = _images(1, size)
    machine = machine_info(None)
    rows: list[dict] = []
    loaded = []
    for row in suite["rows"]:
        rec = {"label": row["label"], "precision": row.get("precision"), "runner": row.get("runner"),
               "status": "failed", "error": None, "ms": []}
        try:
            seg = _load(str(paths[row.get("artifact", "checkpoint")]), row.get("runner"), device="cpu",
                        precision=row.get("precision"), threads=None, size=size, options=row.get("options") or {})
            rec["backend"] = seg.backend
            timer = StageTimer("cpu")
            seg.run(images, timer=timer)  # warm-up
            rec["status"] = "ok"
            loaded.append((rec, seg))
        except Exception as exc:  # a failing backend is a row with its reason, as in the suite
            rec["error"] = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        rows.append(rec)
    load_start = load_average()
    t_start = time.perf_counter()
    sgemm: list[float] = []  # the yardstick, measured once per round under the same load
    threads = next((seg.threads for _, seg in loaded if getattr(seg, "threads", None)), None) or os.cpu_count()
    for r in range(args.rounds):
        for rec, seg in loaded:
            timer = StageTimer("cpu")
            timer.begin()
            seg.run(images, timer=timer)
            rec["ms"].append(timer.step())
        sgemm.append(sgemm_gflops(2048, device="cpu", seconds=0.5, threads=threads))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{rec['label']} {rec['ms'][-1]:.0f} ms"
                                                         for rec, _ in loaded)
              + f", sgemm {sgemm[-1]:.0f} GFLOP/s", flush=True)
    for _, seg in loaded:
        seg.close()
    ref = next((r for r in rows if r["label"] == suite.get("reference") and r["status"] == "ok"), None)
    for rec in rows:
        if rec["status"] != "ok":
            continue
        rec["median_ms"] = float(np.median(rec["ms"]))
        rec["min_ms"] = float(np.min(rec["ms"]))
        if ref is not None:
            rec["ratio_of_medians"] = ref["median_ms"] / rec["median_ms"] if "median_ms" in ref else None
            rec["paired_ratio_median"] = float(np.median(np.asarray(ref["ms"]) / np.asarray(rec["ms"])))
            rec["paired_ratio_min"] = float(np.min(np.asarray(ref["ms"]) / np.asarray(rec["ms"])))
            rec["paired_ratio_max"] = float(np.max(np.asarray(ref["ms"]) / np.asarray(rec["ms"])))
    flops = model_flops(loaded[0][1].meta, size) if loaded else None
    sgemm_median = float(np.median(sgemm)) if sgemm else None
    for rec in rows:
        if rec["status"] == "ok" and flops and sgemm_median:
            rec["gflops_per_s"] = flops / 1e9 / (rec["median_ms"] / 1e3)
            rec["sgemm_fraction"] = rec["gflops_per_s"] / sgemm_median
    # the reference's own ratios need its median first
    if ref is not None:
        for rec in rows:
            if rec["status"] == "ok":
                rec["ratio_of_medians"] = ref["median_ms"] / rec["median_ms"]
    by = {r["label"]: r for r in rows}
    targets = []
    for t in suite.get("targets") or []:
        row, vs = by.get(t["row"]), by.get(t.get("vs", suite.get("reference")))
        ratio = None
        if row and vs and row["status"] == "ok" and vs["status"] == "ok":
            ratio = float(np.median(np.asarray(vs["ms"]) / np.asarray(row["ms"])))
        targets.append({"row": t["row"], "vs": t.get("vs", suite.get("reference")), "min_ratio": t["min_ratio"],
                        "paired_ratio_median": ratio, "met": None if ratio is None else ratio >= t["min_ratio"]})
    doc = {"machine": machine, "suite": suite.get("name"), "rounds": args.rounds, "size": list(size),
           "load_average_start": load_start, "load_average_end": load_average(),
           "seconds": round(time.perf_counter() - t_start, 1), "reference": suite.get("reference"),
           "model_gflops": None if not flops else flops / 1e9, "sgemm_gflops_per_round": sgemm,
           "sgemm_gflops": sgemm_median, "rows": rows, "targets": targets}
    lines = [f"# {suite.get('title', suite['name'])} — interleaved ({args.rounds} rounds)", "",
             f"Machine: {machine_line(machine)}; load average at the first round {load_start}, after the last "
             f"{doc['load_average_end']}; {doc['seconds']:.0f} s of rounds.", "",
             "One iteration of every row per round, rows in suite order; x ref = reference ms / row ms "
             "(paired: per round, then the median, min and max over rounds).  % sgemm = model GFLOPs "
             "(" + (f"{flops / 1e9:.0f}" if flops else "?") + ") / median latency over the median of a "
             "2048^3 fp32 torch.mm timed once per round between the rows ("
             + (f"{sgemm_median:.0f} GFLOP/s, per round {', '.join(f'{g:.0f}' for g in sgemm)}" if sgemm else "–")
             + "); int8 rows count the same FLOPs, so they can pass 100 %, and so can well-tuned fp32 "
             "convolutions: torch.mm is the yardstick, not the cores' theoretical peak.", "",
             "| row | backend | status | median ms | min ms | x ref (medians) | x ref paired median [min, max] | % sgemm | note |",
             "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in rows:
        if r["status"] == "ok":
            frac = f"{100 * r['sgemm_fraction']:.0f} %" if r.get("sgemm_fraction") else "–"
            lines.append(f"| {r['label']} | {r.get('backend')} | ok | {r['median_ms']:.0f} | {r['min_ms']:.0f} | "
                         f"{r.get('ratio_of_medians', 0):.2f}x | {r.get('paired_ratio_median', 0):.2f}x "
                         f"[{r.get('paired_ratio_min', 0):.2f}, {r.get('paired_ratio_max', 0):.2f}] | {frac} | |")
        else:
            lines.append(f"| {r['label']} | – | failed | – | – | – | – | – | {(r['error'] or '').replace('|', '/')} |")
    lines += ["", "| target | vs | needed | measured (paired median) | met |", "| --- | --- | ---: | ---: | --- |"]
    for t in targets:
        m = "–" if t["paired_ratio_median"] is None else f"{t['paired_ratio_median']:.2f}x"
        lines.append(f"| {t['row']} | {t['vs']} | {t['min_ratio']:.2f}x | {m} | "
                     f"{'–' if t['met'] is None else ('yes' if t['met'] else 'no')} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_record(out, doc, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
