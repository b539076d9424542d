"""Export accuracy of trained checkpoints: every CPU format x precision vs fp32 PyTorch, one command.

    python3 bench/export_accuracy.py --runs quickstart/runs --data quickstart/data

For each ``RUNS/<arch>/best.pt`` (the quickstart's trained small presets by default) this exports,
with the ``cityseg`` CLI exactly as a user would:

- ONNX fp32, fp16, int8 (Q/DQ, calibrated on the train split of ``--data``) and bf16;
- OpenVINO fp32, int8 ``--int8-method qdq`` and ``--int8-method nncf``, and bf16;
- the checkpoint itself in bf16 (``best.pt@bf16``: autocast bf16).  On a CPU without native bf16
  ``cityseg check --emulate-bf16`` still measures its accuracy — oneDNN's emulation rounds weights
  and activations to bf16 exactly as AVX-512 BF16/AMX would — and the row says ``emulated``; its
  speed is not measured there (emulation is slower than fp32 and says nothing about bf16 speed);

then runs ``cityseg check best.pt CANDIDATES... --data DATA --json`` (the val split) and
``cityseg bench`` on every artifact, so NNCF and Q/DQ are compared at measured speed too.
A refused or failed export (bf16 on a CPU without native bf16, a parity gate) becomes a row with
the tool's own message.  Targets: int8 <= 1.0 mIoU point below fp32 PyTorch, fp16 <= 0.1.

Writes ``--out``.json / .md (default ``bench/results/export_accuracy``) with the machine (CPU,
flags, threads, versions, load average before/after) that produced them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

#: (label, format, precision, extra export options)
PLAN: list[tuple[str, str, str, list[str]]] = [
    ("onnx fp32", "onnx", "fp32", []),
    ("onnx fp16", "onnx", "fp16", []),
    ("onnx int8", "onnx", "int8", []),
    ("onnx bf16", "onnx", "bf16", []),
    ("openvino fp32", "openvino", "fp32", []),
    ("openvino int8 qdq", "openvino", "int8", ["--int8-method", "qdq"]),
    ("openvino int8 nncf", "openvino", "int8", ["--int8-method", "nncf"]),
    ("openvino bf16", "openvino", "bf16", []),
    ("torch bf16", "torch", "bf16", []),
]
TARGETS = {"int8": 1.0, "fp16": 0.1, "fp32": 0.01, "bf16": 0.3}  # max mIoU drop, points
MODELS = ("deeplabv3_small", "unet_small", "denseaspp_small")


def _out_path(work: Path, arch: str, fmt: str, precision: str, extra: list[str]) -> Path:
    method = f"_{extra[-1]}" if extra else ""
    if fmt == "onnx":
        return work / f"{arch}_{precision}{method}.onnx"
    return work / f"{arch}_{precision}{method}_openvino_model"


def _error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1][:400]


def run_cli(args: list[str], log) -> tuple[int, str, float]:
    """Run ``cityseg ARGS``; return (exit status, combined output, seconds)."""
    cmd = [sys.executable, "-m", "cityseg_deploy", *args]
    log("$ cityseg " + " ".join(args))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0


def export_all(arch: str, ckpt: Path, data: Path, work: Path, log) -> list[dict]:
    from cityseg_deploy.fileio import path_mb
    from cityseg_deploy.system.machine import has_native_bf16

    rows = []
    for label, fmt, precision, extra in PLAN:
        if fmt == "torch":  # no export: the checkpoint at another precision
            emulated = precision == "bf16" and not has_native_bf16()
            rows.append({"model": arch, "artifact": label + (" (emulated)" if emulated else ""),
                         "format": fmt, "precision": precision, "path": f"{ckpt}@{precision}",
                         "status": "ok", "emulated": emulated})
            continue
        out = _out_path(work, arch, fmt, precision, extra)
        code, text, seconds = run_cli(["export", str(ckpt), "--format", fmt, "--precision", precision,
                                       "--out", str(out), "--calib-data", str(data), "--data", str(data),
                                       *extra], log)
        row = {"model": arch, "artifact": label, "format": fmt, "precision": precision,
               "path": str(out), "export_seconds": round(seconds, 1)}
        if code == 0 and out.exists():
            row.update(status="ok", file_mb=path_mb(out))
            parity = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("parity")]
            row["export_parity"] = parity[-1] if parity else None
        else:
            row.update(status="failed", error=_error_line(text), exit_status=code)
        log(f"  {label}: {row['status']} ({seconds:.1f} s){' — ' + row['error'] if row.get('error') else ''}")
        rows.append(row)
    return rows


def check_all(ckpt: Path, rows: list[dict], data: Path, work: Path, arch: str, log) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    js = work / f"{arch}_check.json"
    code, text, seconds = run_cli(["check", str(ckpt), *[r["path"] for r in ok], "--data", str(data),
                                   "--json", str(js), "--no-progress", "--emulate-bf16"], log)
    if code != 0:
        raise SystemExit(f"cityseg check failed for {arch}: {_error_line(text)}")
    doc = json.loads(js.read_text())
    by_path = {str(Path(c["path"]).resolve()): c for c in doc["candidates"]}
    for r in ok:
        cand = by_path[str(Path(r["path"]).resolve())]
        r["miou"] = 100 * cand["miou"]
        r["miou_drop"] = -100 * cand["delta"]["miou"]
        r["per_pixel_delta"] = 100 * cand["delta"]["per_pixel"]
        r["agreement"] = cand["agreement"]
        err = cand.get("logit_error") or {}
        r["logit_max_abs"], r["logit_p99_abs"] = err.get("max_abs"), err.get("p99_abs")
        target = TARGETS.get(r["precision"])
        r["target_max_drop"] = target
        r["meets_target"] = None if target is None else bool(r["miou_drop"] <= target)
    base = doc["baseline"]
    return {"miou": 100 * base["miou"], "per_pixel": 100 * base["per_pixel"],
            "images": len(list((data / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))),
            "check_seconds": round(seconds, 1)}


def bench_all(rows: list[dict], ckpt: Path, work: Path, arch: str, iters: int, log) -> None:
    ok = [r for r in rows if r["status"] == "ok" and not r.get("emulated")]
    js = work / f"{arch}_bench.json"
    code, text, _ = run_cli(["bench", str(ckpt), *[r["path"] for r in ok], "--iters", str(iters),
                             "--warmup", "5", "--json", str(js), "--no-progress"], log)
    if code != 0:
        log(f"  bench failed: {_error_line(text)}")
        return
    doc = json.loads(js.read_text())
    by_path = {str(Path(b["path"]).resolve()): b for b in doc["results"]}
    torch_row = by_path.get(str(ckpt.resolve()))
    for r in ok:
        b = by_path.get(str(Path(r["path"]).resolve()))
        if b and b["status"] == "ok":
            r["latency_ms_median"] = b["latency_ms"]["median"]
            r["latency_ms_mean"] = b["latency_ms"]["mean"]
            r["speedup_vs_torch"] = (torch_row["latency_ms"]["median"] / b["latency_ms"]["median"]
                                     if torch_row and torch_row["status"] == "ok" else None)
    if torch_row and torch_row["status"] == "ok":
        rows.insert(0, {"model": arch, "artifact": "torch fp32 (baseline)", "format": "torch",
                        "precision": "fp32", "path": str(ckpt), "status": "ok", "miou_drop": 0.0,
                        "latency_ms_median": torch_row["latency_ms"]["median"],
                        "latency_ms_mean": torch_row["latency_ms"]["mean"], "speedup_vs_torch": 1.0})


def _f(v, fmt="{:.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def markdown(doc: dict) -> str:
    from cityseg_deploy.system.machine import FLAGS_OF_INTEREST, machine_line

    lines = ["# Export accuracy of the trained small presets", "",
             f"Machine: {machine_line(doc['machine'])}; load average before {doc['load_before']}, "
             f"after {doc['load_after']}. Instruction sets looked for: {', '.join(FLAGS_OF_INTEREST)} "
             f"(present: {', '.join(doc['machine'].get('cpu_flags') or []) or 'none'}).", "",
             f"Checkpoints: `{doc['runs']}/<arch>/best.pt`; data: `{doc['data']}` (val split "
             "for the check, train split for int8 calibration). Drop = fp32 PyTorch mIoU − "
             "artifact mIoU (points; negative = better). Targets: int8 ≤ 1.0, fp16 ≤ 0.1 (fp32 ≤ 0.01: "
             "a sanity bound, not a project target). "
             f"Speed: `cityseg bench` median ms, batch 1, {doc['bench_iters']} iterations, same run.",
             "", f"Reproduce: `{doc['command']}`", ""]
    for arch, m in doc["models"].items():
        lines += [f"## {arch}", "", f"fp32 PyTorch mIoU {m['baseline']['miou']:.2f} %, per-pixel "
                  f"{m['baseline']['per_pixel']:.2f} % on {m['baseline'].get('images') or '?'} val images.", "",
                  "| artifact | status | mIoU % | drop (pts) | target | agreement | logit max / p99 | "
                  "median ms | x torch | export s | MB | note |",
                  "| --- | --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
        for r in m["rows"]:
            ok = r["status"] == "ok"
            target = ("–" if r.get("meets_target") is None else
                      f"≤ {r['target_max_drop']:g}: {'met' if r['meets_target'] else '**missed**'}")
            logit = (f"{r['logit_max_abs']:.2e} / {r['logit_p99_abs']:.2e}"
                     if r.get("logit_max_abs") is not None else "–")
            lines.append(
                f"| {r['artifact']} | {r['status']} | {_f(r.get('miou')) if 'miou' in r else _f(m['baseline']['miou']) if ok else '–'} | "
                f"{_f(r.get('miou_drop'), '{:+.2f}') if ok else '–'} | {target} | "
                f"{_f(r.get('agreement'), '{:.4f}')} | {logit} | {_f(r.get('latency_ms_median'), '{:.1f}')} | "
                f"{_f(r.get('speedup_vs_torch'), '{:.2f}x')} | {_f(r.get('export_seconds'), '{:.1f}')} | "
                f"{_f(r.get('file_mb'), '{:.2f}')} | {(r.get('error') or '').replace('|', '/')} |")
        lines.append("")
    lines += ["## OpenVINO int8: NNCF vs Q/DQ", "",
              "| network | qdq drop | nncf drop | qdq agreement | nncf agreement | qdq ms | nncf ms |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for arch, m in doc["models"].items():
        by = {r["artifact"]: r for r in m["rows"]}
        q, n = by.get("openvino int8 qdq", {}), by.get("openvino int8 nncf", {})
        lines.append(f"| {arch} | {_f(q.get('miou_drop'), '{:+.2f}')} | {_f(n.get('miou_drop'), '{:+.2f}')} | "
                     f"{_f(q.get('agreement'), '{:.4f}')} | {_f(n.get('agreement'), '{:.4f}')} | "
                     f"{_f(q.get('latency_ms_median'), '{:.1f}')} | {_f(n.get('latency_ms_median'), '{:.1f}')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="quickstart/runs", help="folder of <arch>/best.pt")
    ap.add_argument("--data", default="quickstart/data", help="Cityscapes-layout root (val + train)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--work", default=None, help="folder for the artifacts (default: RUNS/../export_accuracy)")
    ap.add_argument("--bench-iters", type=int, default=30)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_accuracy"),
                    help="output stem (.json and .md)")
    args = ap.parse_args(argv)

    from cityseg_deploy.system.machine import load_average, machine_info
    from cityseg_deploy.bench.records import write_record

    runs, data = Path(args.runs), Path(args.data)
    work = Path(args.work) if args.work else runs.parent / "export_accuracy"
    work.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    doc = {"machine": machine_info(None), "load_before": load_average(), "runs": str(runs),
           "data": str(data), "bench_iters": args.bench_iters,
           "command": "python3 bench/export_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "targets_max_miou_drop": TARGETS, "models": {}}
    start = time.perf_counter()
    for arch in [m.strip() for m in args.models.split(",") if m.strip()]:
        ckpt = runs / arch / "best.pt"
        if not ckpt.is_file():
            raise SystemExit(f"error: {ckpt}: no checkpoint (run cityseg quickstart first)")
        log(f"[{arch}] export")
        rows = export_all(arch, ckpt, data, work, log)
        log(f"[{arch}] check")
        baseline = check_all(ckpt, rows, data, work, arch, log)
        log(f"[{arch}] bench")
        bench_all(rows, ckpt, work, arch, args.bench_iters, log)
        doc["models"][arch] = {"baseline": baseline, "rows": rows}
    doc["load_after"] = load_average()
    doc["seconds"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_record(out, doc, markdown(doc))
    log(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')} ({doc['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
