"""int8 accuracy control and calibration methods on the three small presets, one command.

    python3 bench/accuracy_control.py --runs RUNS --data DATA [--max-drop 0.3]

For each ``RUNS/<arch>/best.pt`` (trained small presets) this measures, through the library the
CLI calls (``cityseg export`` / ``cityseg check`` / ``cityseg bench``):

1. **calibration methods** — int8 ONNX exported with ``--calibration minmax|percentile|entropy``:
   export seconds, mIoU drop vs fp32 PyTorch on the val split of DATA (``check``'s figure) and
   median latency (onnxruntime, batch 1);
2. **accuracy control** on the trained checkpoint and on a copy made *hostile* to int8 (one
   BN→ReLU→Conv channel scaled by 1000 and its consumers' weights divided by 1000, at a point
   every path goes through (:data:`HOSTILE`): the same fp32 function, an activation outlier —
   see tests/test_accuracy.py): the drop of plain int8, the
   drop after ``--max-drop P``, the layers kept in float, the trials, and the speed cost of the
   float layers (latency of the controlled graph vs plain int8 and fp32 ONNX).

Writes ``--out``.json / .md (default ``bench/results/accuracy_control``) with the machine (CPU
model, instruction sets, threads, versions, load average).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

MODELS = ("deeplabv3_small", "unet_small", "denseaspp_small")
#: (BatchNorm whose channel becomes an outlier, the Convs that read it after a ReLU (and a max
#: pool, which commutes with a positive scale)) — a point every path of the network goes through
HOSTILE = {"unet_small": ("down1.maxpool_conv.1.double_conv.1", ["down1.maxpool_conv.1.double_conv.3"]),
           "deeplabv3_small": ("backbone.bn1", ["backbone.layer1.0.conv1", "backbone.layer1.0.downsample.0"]),
           "denseaspp_small": ("features.transition1.norm", ["features.transition1.conv"])}
CALIBRATIONS = ("minmax", "percentile", "entropy")


def make_hostile(src: Path, dst: Path, arch: str, scale: float = 1000.0, channel: int = 0) -> Path:
    import torch

    from cityseg_deploy.models.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(src)
    bn_name, conv_names = HOSTILE[arch]
    bn = model.get_submodule(bn_name)
    with torch.no_grad():
        bn.weight[channel] *= scale
        bn.bias[channel] *= scale
        for name in conv_names:
            model.get_submodule(name).weight[:, channel] /= scale
    save_checkpoint(dst, model.eval(), meta)
    return dst


def drop_of(ckpt: Path, artifact: Path, data: Path) -> tuple[float, float]:
    """(mIoU %, drop in points) exactly as ``cityseg check CKPT ARTIFACT --data DATA``."""
    from cityseg_deploy.evaluation.check import check

    report = check(str(ckpt), [str(artifact)], data, progress=False)
    cand = report["candidates"][0]
    return 100.0 * cand["miou"], -100.0 * cand["delta"]["miou"]


ROUNDS = 3


def latency(paths: list[Path], iters: int) -> dict[str, float | None]:
    """Minimum latency of each artifact over ``ROUNDS`` interleaved rounds of ``iters`` runs:
    on a CPU shared with other jobs the minimum is the figure least moved by them, and
    interleaving spreads a busy spell over all rows instead of one."""
    from cityseg_deploy.bench.benchmark import benchmark

    out: dict[str, float | None] = {str(p): None for p in paths}
    for _ in range(ROUNDS):
        report = benchmark([str(p) for p in paths], iters=iters, warmup=3, progress=False)
        for path, row in zip(paths, report["results"]):
            if row["status"] == "ok":
                best = out[str(path)]
                out[str(path)] = row["latency_ms"]["min"] if best is None else min(best, row["latency_ms"]["min"])
    return out


def export_timed(ckpt: Path, out: Path, **kw) -> tuple[object, float]:
    from cityseg_deploy.export import export

    t0 = time.perf_counter()
    res = export(ckpt, format="onnx", out=out, log=None, **kw)
    return res, time.perf_counter() - t0


def run_arch(arch: str, ckpt: Path, data: Path, work: Path, max_drop: float, iters: int, log) -> dict:
    if work.exists():  # a fresh start: no calibration cache from an earlier run shortens a row
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    fp32, _ = export_timed(ckpt, work / f"{arch}.onnx")
    rows_cal = []
    for method in CALIBRATIONS:
        log(f"{arch}: int8 --calibration {method}")
        res, secs = export_timed(ckpt, work / f"{arch}_int8_{method}.onnx", precision="int8",
                                 calib_data=data, calibration=method, verify=False)
        miou, drop = drop_of(ckpt, res.path, data)
        rows_cal.append({"calibration": method, "export_s": secs, "miou": miou, "drop": drop,
                         "path": str(res.path)})
    lat = latency([fp32.path] + [Path(r["path"]) for r in rows_cal], iters)
    for r in rows_cal:
        r["min_ms"] = lat[r["path"]]
    control = []
    for variant, source in (("trained", ckpt), ("hostile", make_hostile(ckpt, work / f"{arch}_hostile.pt", arch))):
        log(f"{arch} ({variant}): plain int8, then --max-drop {max_drop}")
        plain, plain_s = export_timed(source, work / f"{arch}_{variant}_plain_int8.onnx", precision="int8",
                                      calib_data=data, verify=False)
        plain_miou, plain_drop = drop_of(source, plain.path, data)
        ctrl, ctrl_s = export_timed(source, work / f"{arch}_{variant}_maxdrop_int8.onnx", precision="int8",
                                    calib_data=data, max_drop=max_drop)
        ac = ctrl.checks["accuracy_control"]
        ctrl_miou, ctrl_drop = drop_of(source, ctrl.path, data)
        src_fp32, _ = export_timed(source, work / f"{arch}_{variant}.onnx")
        lat = latency([src_fp32.path, plain.path, ctrl.path], iters)
        control.append({
            "variant": variant, "max_drop": max_drop, "fp32_miou": ac["miou_ref"],
            "plain_drop": plain_drop, "plain_miou": plain_miou, "drop": ac["drop"],
            "check_drop": ctrl_drop, "within": ac["within"], "kept_float": ac["kept_float"],
            "excluded_nodes": len(ac["excluded_nodes"]),
            "export_s_plain": plain_s, "export_s_controlled": ctrl_s,
            "fp32_ms": lat[str(src_fp32.path)], "plain_int8_ms": lat[str(plain.path)],
            "controlled_int8_ms": lat[str(ctrl.path)]})
        from cityseg_deploy.artifacts import read_artifact_meta

        control[-1]["trials"] = len(read_artifact_meta(ctrl.path)[1]["accuracy_control"]["trials"])
    return {"model": arch, "checkpoint": str(ckpt), "calibration": rows_cal, "accuracy_control": control}


def _f(v, fmt="{:.2f}"):
    return "–" if v is None else fmt.format(v)


def to_markdown(doc: dict) -> str:
    from cityseg_deploy.system.machine import FLAGS_OF_INTEREST, machine_line

    m = doc["machine"]
    lines = ["# int8 accuracy control and calibration methods (small presets)", "",
             f"Machine: {machine_line(m)}; load average before {doc['load_before']}, after "
             f"{doc['load_after']}. Instruction sets looked for: {', '.join(FLAGS_OF_INTEREST)} "
             f"(present: {', '.join(m.get('cpu_flags') or []) or 'none'}).", "",
             f"Checkpoints: `{doc['runs']}/<arch>/best.pt` (briefly trained on the synthetic set at "
             f"64x128); data `{doc['data']}` (train split calibrates, val split measures). Drop = fp32 "
             f"PyTorch mIoU − int8 mIoU in points, as `cityseg check` computes it (negative = better). "
             f"Latency: `cityseg bench` **minimum** ms over {doc.get('rounds', ROUNDS)} interleaved rounds of {doc['iters']} "
             f"iterations (the figure least moved by other jobs on this shared CPU: see the load "
             f"average), onnxruntime CPU, batch 1. The *trained* rows whose controlled graph keeps "
             f"no layer in float run the very same graph twice: their difference is the measurement "
             f"noise.", "",
             f"Reproduce: `{doc['command']}`", ""]
    for r in doc["results"]:
        lines += [f"## {r['model']}", "", "### Calibration methods (trained checkpoint)", "",
                  "| calibration | drop (pts) | mIoU % | min ms | export s |", "| --- | ---: | ---: | ---: | ---: |"]
        for c in r["calibration"]:
            lines.append(f"| {c['calibration']} | {c['drop']:+.2f} | {c['miou']:.2f} | {_f(c['min_ms'], '{:.1f}')} | "
                         f"{c['export_s']:.1f} |")
        lines += ["", f"### Accuracy control (`--max-drop {doc['max_drop']:g}`)", "",
                  "| variant | fp32 mIoU % | plain int8 drop | controlled drop (export / check) | within | layers kept in float | nodes without Q/DQ | trials | fp32 min ms | plain int8 min ms | controlled min ms | cost vs plain int8 | export s |",
                  "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for c in r["accuracy_control"]:
            cost = (c["controlled_int8_ms"] / c["plain_int8_ms"] - 1) * 100 if c["plain_int8_ms"] and c["controlled_int8_ms"] else None
            lines.append(f"| {c['variant']} | {c['fp32_miou']:.2f} | {c['plain_drop']:+.2f} | {c['drop']:+.2f} / "
                         f"{c['check_drop']:+.2f} | {'yes' if c['within'] else 'no'} | "
                         f"{', '.join(c['kept_float']) or 'none'} | {c['excluded_nodes']} | {c['trials']} | "
                         f"{_f(c['fp32_ms'], '{:.1f}')} | {_f(c['plain_int8_ms'], '{:.1f}')} | "
                         f"{_f(c['controlled_int8_ms'], '{:.1f}')} | {_f(cost, '{:+.0f} %')} | {c['export_s_controlled']:.1f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    import sys

    from cityseg_deploy.system.machine import load_average, machine_info
    from cityseg_deploy.bench.records import write_record

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cityseg_accuracy_control"))
    ap.add_argument("--max-drop", type=float, default=0.3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved latency rounds")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "accuracy_control")
    ap.add_argument("--append", action="store_true", help="add to the models already in --out.json")
    args = ap.parse_args()
    globals()["ROUNDS"] = args.rounds
    doc = {"machine": machine_info(None), "load_before": load_average(), "runs": str(args.runs),
           "data": str(args.data), "max_drop": args.max_drop, "iters": args.iters, "rounds": args.rounds,
           "command": "python3 bench/accuracy_control.py " + " ".join(sys.argv[1:]), "results": []}
    if args.append and args.out.with_suffix(".json").is_file():
        old = json.loads(args.out.with_suffix(".json").read_text())
        doc["results"] = [r for r in old["results"] if r["model"] not in args.models.split(",")]
        doc["load_before"] = old["load_before"]
    for arch in args.models.split(","):
        ckpt = args.runs / arch / "best.pt"
        if not ckpt.is_file():
            print(f"skip {arch}: no {ckpt}")
            continue
        doc["results"].append(run_arch(arch, ckpt, args.data, args.work / arch, args.max_drop, args.iters, print))
        doc["load_after"] = load_average()
        write_record(args.out, doc, to_markdown(doc))
    print(to_markdown(doc))


if __name__ == "__main__":
    main()
