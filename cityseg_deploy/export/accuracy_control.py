"""``cityseg export ... --precision int8 --max-drop P``: int8 with a measured maximum mIoU drop.

1. Export plain int8 (every layer quantised) and measure its mIoU drop on the val split of
   ``--val-data`` (default: the calibration root) exactly as ``cityseg check CKPT ARTIFACT``
   does — same runtime, same confusion matrix, the checkpoint in PyTorch as the baseline — so the
   figure the export reports is the figure ``check`` finds.
2. While the drop exceeds ``P`` points: rank the layers (any op) by the error they introduce
   (:mod:`cityseg_deploy.evaluation.layerwise`, the int8 artifact against the fp32 graph), keep
   the first ``k`` of them in float and re-export from the cached calibration ranges.  ``k``
   grows 1, 2, 4, ... until the bound is met, then a bisection finds the smallest ``k`` that
   meets it (assuming more float layers never hurt; every trial is measured, none assumed).
3. Keeping a layer in float means leaving out the Q/DQ of its *float island*: the layer, the
   single-input ops its output flows through (ReLU, pooling, resize, ...) and the first
   consumers that would quantise it again (a Conv, a Concat) — onnxruntime's ``quantize_static``
   quantises a tensor whenever any node next to it is quantised, so excluding the layer alone
   leaves the outlier tensor quantised for its consumer.  The excluded node names go to
   ``nodes_to_exclude`` (the Q/DQ graph that TensorRT, onnxruntime and OpenVINO ``qdq`` read) or
   to NNCF's ``ignored_scope`` (OpenVINO ``--int8-method nncf``, by the same names: OpenVINO
   keeps ONNX node names as op names).

The result is the best trial: the smallest float set within the bound, else the lowest drop
reached (``--strict`` then fails with exit status 2, the best artifact kept).  Its metadata
records ``accuracy_control`` = {max_drop, drop, miou, miou_ref, within, kept_float (ranked
layers), excluded_nodes (their islands), trials}; ``cityseg check`` prints it.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import CitysegError
from ..fileio import path_mb
from ..system.timing import Timer
from .job import ExportJob
from .result import ExportResult

#: single-input ops a tensor flows through unchanged in kind (a float island continues past them)
PASSTHROUGH = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "MaxPool", "AveragePool",
                         "Pad", "Resize", "Reshape", "Transpose", "Identity", "Flatten", "Squeeze",
                         "Unsqueeze", "Slice", "Split", "Upsample", "DepthToSpace", "SpaceToDepth"})
DEFAULT_MAX_TRIALS = 12
LAYERWISE_IMAGES = 4


def validate(fmt_name: str, precision: str, opts: dict[str, Any]) -> None:
    if precision != "int8" or fmt_name not in ("onnx", "openvino"):
        raise CitysegError("--max-drop applies to --precision int8 with --format onnx or openvino")
    if float(opts["max_drop"]) < 0:
        raise CitysegError(f"--max-drop {opts['max_drop']}: a drop in mIoU points, >= 0")
    if opts.get("keep_fp32"):
        raise CitysegError("--max-drop chooses the layers kept in float itself; drop --keep-fp32")
    if opts.get("verify") is False:
        raise CitysegError("--max-drop measures accuracy; it cannot be combined with --no-verify")


def float_island(model, node_name: str) -> list[str]:
    """``node_name`` plus the nodes its output reaches through :data:`PASSTHROUGH` ops, up to and
    including the first consumers that are not (see the module doc)."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    by_name = {n.name: n for n in model.graph.node}
    island, todo = [node_name], [by_name[node_name]] if node_name in by_name else []
    while todo:
        node = todo.pop()
        for out in node.output:
            for c in consumers.get(out, []):
                if c.name and c.name not in island:
                    island.append(c.name)
                    if c.op_type in PASSTHROUGH:
                        todo.append(c)
    return island


def _annotate(path: Path, kind: str, record: dict[str, Any]) -> None:
    """Add ``record`` as ``io.accuracy_control`` in the artifact's metadata (written in place,
    before the artifact is moved to its final name)."""
    from ..artifacts import ONNX_META_KEY, openvino_files, pack, unpack

    if kind == "onnx":
        import onnx

        model = onnx.load(str(path))
        props = {p.key: p for p in model.metadata_props}
        meta, io = unpack(props[ONNX_META_KEY].value, str(path))
        io["accuracy_control"] = record
        io["keep_fp32"] = record["excluded_nodes"]
        props[ONNX_META_KEY].value = pack(meta, io)
        onnx.save(model, str(path))
    else:
        meta_file = openvino_files(path)[2]
        meta, io = unpack(meta_file.read_text(), str(meta_file))
        io["accuracy_control"] = record
        io["keep_fp32"] = record["excluded_nodes"]
        meta_file.write_text(pack(meta, io))


def _place(src: Path, out: Path) -> None:
    """Move the chosen trial to ``out`` (a file or an IR folder), replacing it atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        from ..fileio import atomic_path

        with atomic_path(out, is_dir=True) as tmp:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
    else:
        staged = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        shutil.copyfile(src, staged)
        os.replace(staged, out)


class _Trials:
    """Exports with a given float set into a work folder and measures each like ``check``."""

    def __init__(self, job: ExportJob, out: Path, precision: str, fmt, exporter, work: Path, val_root: Path):
        from ..evaluation.evaluate import evaluate

        self.job, self.out, self.precision, self.fmt, self.exporter = job, out, precision, fmt, exporter
        self.work, self.val_root = work, val_root
        self.evaluate = evaluate
        self.results: list[dict[str, Any]] = []
        job.log(f"  accuracy control: fp32 PyTorch baseline on the val split of {val_root}")
        self.base = evaluate(str(job.source), val_root, split="val", progress=False)
        self.cache_from = out.parent

    def run(self, kept: list[str], excluded: list[str]) -> dict[str, Any]:
        n = len(self.results)
        folder = self.work / f"trial{n}"
        folder.mkdir()
        if n == 0:  # a cache kept next to the output (onnx: <out>.calib.json; openvino: <name>.calib.json)
            from .openvino import ir_name
            from .quantize import cache_path

            caches = [cache_path(self.out), cache_path(self.out.with_name(ir_name(self.out) + ".onnx"))]
        else:
            caches = list(Path(self.cache_from).glob("*.calib.json"))
        for cache in caches:
            if cache.is_file():
                shutil.copyfile(cache, folder / cache.name)
        quiet = dataclasses.replace(self.job, keep_fp32=",".join(excluded) or None, verify=False,
                                    log=lambda _m: None,
                                    ignored_scope=tuple(excluded) if self.job.int8_method == "nncf" else ())
        path = folder / self.out.name
        self.exporter(quiet, path, self.precision)
        self.cache_from = folder
        doc = self.evaluate(str(path), self.val_root, split="val", progress=False)
        drop = 100.0 * (self.base["miou"] - doc["miou"])
        trial = {"trial": n, "kept_float": list(kept), "excluded_nodes": list(excluded),
                 "miou": 100.0 * doc["miou"], "drop": drop, "path": path}
        self.results.append(trial)
        self.job.log(f"  accuracy control: trial {n}: {len(kept)} layer(s) in float "
                     f"({len(excluded)} nodes) → mIoU {trial['miou']:.2f} vs fp32 "
                     f"{100 * self.base['miou']:.2f}, drop {drop:+.2f} pts")
        return trial


def _ranking(job: ExportJob, trial: dict[str, Any], work: Path, val_root: Path) -> tuple[list[str], Any]:
    """Layers of the plain int8 artifact, worst first, and the fp32 graph (ModelProto)."""
    import onnx

    from ..evaluation.layerwise import harmful_layers, layerwise
    from .graph import build_fp32_graph

    fp32 = work / "fp32.onnx"
    build_fp32_graph(dataclasses.replace(job, log=lambda _m: None), fp32)
    report = layerwise(fp32, trial["path"], val_root, images=LAYERWISE_IMAGES, progress=False)
    ranked = harmful_layers(report)
    job.log(f"  accuracy control: layers ranked by introduced error (first 5): {', '.join(ranked[:5])}")
    return ranked, onnx.load(str(fp32))


def _search(trials: _Trials, ranked: list[str], model, max_drop: float, max_trials: int) -> None:
    """Doubling then bisection over the number ``k`` of ranked layers kept in float."""
    def excluded_for(k: int) -> list[str]:
        names: list[str] = []
        for layer in ranked[:k]:
            names += [n for n in float_island(model, layer) if n not in names]
        return names

    measured: dict[int, float] = {0: trials.results[0]["drop"]}

    def measure(k: int) -> float:
        if k not in measured:
            measured[k] = trials.run(ranked[:k], excluded_for(k))["drop"]
        return measured[k]

    lo, hi, k = 0, None, 1
    while k <= len(ranked) and len(trials.results) < max_trials:
        if measure(k) <= max_drop:
            hi = k
            break
        lo = k
        if k == len(ranked):
            break
        k = min(2 * k, len(ranked))
    while hi is not None and hi - lo > 1 and len(trials.results) < max_trials:
        mid = (lo + hi) // 2
        if measure(mid) <= max_drop:
            hi = mid
        else:
            lo = mid


def export_with_max_drop(job: ExportJob, out: Path, precision: str, fmt, exporter, *, max_drop: float,
                         val_data=None, strict: bool = False, max_trials: int | None = None) -> ExportResult:
    """Export int8 within ``max_drop`` mIoU points (see the module doc); returns the result of
    the artifact written to ``out``, its ``checks["accuracy_control"]`` the record."""
    from ..data.cityscapes import find_samples

    max_drop = float(max_drop)
    val_root = Path(val_data) if val_data else (job.calib_data or job.data)
    if val_root is None:
        raise CitysegError("--max-drop measures mIoU on labelled images: give --val-data ROOT (or "
                           "--calib-data ROOT, whose val split is then used)")
    if not Path(val_root).is_dir() or not find_samples(val_root, "val"):
        raise CitysegError(f"--val-data {val_root}: no labelled val split there (leftImg8bit/val, "
                           f"gtFine/val); pass a Cityscapes root")
    if job.source.suffix == ".onnx":
        raise CitysegError(f"{job.source}: --max-drop exports from the checkpoint (.pt)")
    max_trials = int(max_trials or DEFAULT_MAX_TRIALS)
    out.parent.mkdir(parents=True, exist_ok=True)
    with Timer() as t, tempfile.TemporaryDirectory(prefix=".cityseg-maxdrop-", dir=out.parent) as d:
        work = Path(d)
        trials = _Trials(job, out, precision, fmt, exporter, work, Path(val_root))
        first = trials.run([], [])
        ranked: list[str] = []
        if first["drop"] > max_drop:
            ranked, model = _ranking(job, first, work, Path(val_root))
            _search(trials, ranked, model, max_drop, max_trials)
        within = [r for r in trials.results if r["drop"] <= max_drop]
        best = min(within, key=lambda r: (len(r["excluded_nodes"]), r["trial"])) if within else \
            min(trials.results, key=lambda r: r["drop"])
        record = {"max_drop": max_drop, "drop": best["drop"], "miou": best["miou"],
                  "miou_ref": 100.0 * trials.base["miou"], "within": bool(within),
                  "val_data": str(val_root), "kept_float": best["kept_float"],
                  "excluded_nodes": best["excluded_nodes"], "ranking": ranked[:20],
                  "trials": [{k: v for k, v in r.items() if k != "path"} for r in trials.results]}
        _annotate(best["path"], fmt.name, record)
        _place(best["path"], out)
        for cache in best["path"].parent.glob("*.calib.json"):
            shutil.copyfile(cache, out.parent / cache.name)
    kept = ", ".join(best["kept_float"]) or "none"
    job.log(f"  accuracy control: {'within' if within else 'NOT within'} {max_drop:g} pts: drop "
            f"{best['drop']:+.2f} pts with {len(best['kept_float'])} layer(s) in float ({kept}; "
            f"{len(best['excluded_nodes'])} nodes without Q/DQ) after {len(trials.results)} trial(s)")
    if not within and strict:
        raise CitysegError(f"--max-drop {max_drop:g} --strict: the best reached is a drop of "
                           f"{best['drop']:.2f} pts with {len(best['kept_float'])} layers in float "
                           f"(kept as {out}); allow more trials (--max-trials) or a larger drop")
    checks = {"accuracy_control": {k: v for k, v in record.items() if k != "trials"},
              "miou": best["miou"], "miou_drop": best["drop"]}
    return ExportResult(out, fmt.name, precision, t.seconds, path_mb(out), checks)
