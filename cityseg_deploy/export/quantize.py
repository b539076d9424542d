"""int8 ONNX with Q/DQ nodes, calibrated on real images, with a calibration cache.

int8 lives in the graph as QuantizeLinear/DequantizeLinear pairs (TensorRT 11 removed implicit
int8; DESIGN.md), made with onnxruntime's ``quantize_static`` in the one form all runners take:

- symmetric, zero points 0, float biases: what TensorRT's ONNX parser accepts;
- per-channel weights in a reduced 7-bit range: full-range weights saturate ``vpmaddubsw`` on x86
  CPUs without VNNI;
- tensor ranges cached in ``<out stem>.calib.json``, keyed by graph, images and method, so a
  rebuild with the same key skips calibration.

The design in full and the figures behind it: bench/results/int8_design_notes.md.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CitysegError
from ..fileio import atomic_path, path_mb, write_text_atomic
from ..system.machine import session_threads as threads
from ..system.timing import Timer
from .images import for_job, job_batches, job_input
from .job import ExportJob
from .result import ExportResult

METHOD = "minmax/qdq/int8-symmetric/per-channel/7-bit-weights"
CALIBRATIONS = ("minmax", "percentile", "entropy")


def method_of(job: ExportJob) -> str:
    """The calibration description stored in the metadata and the cache key."""
    return METHOD.replace("minmax", calibration_of(job), 1)


def calibration_of(job: ExportJob) -> str:
    name = (getattr(job, "calibration", None) or "minmax").lower()
    if name not in CALIBRATIONS:
        close = difflib.get_close_matches(name, CALIBRATIONS, n=1)
        raise CitysegError(f"--calibration {name!r}: unknown{'; did you mean ' + repr(close[0]) + '?' if close else ''}"
                           f" (choose {', '.join(CALIBRATIONS)})")
    return name
CACHE_VERSION = 1
AUTO_GAIN = 0.10  # keep a candidate layer in fp32 if excluding it cuts the error by >= 10 %


def cache_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.name[: -len(out.suffix)] + ".calib.json" if out.suffix else out.name + ".calib.json")


def calibration_images(job: ExportJob) -> tuple[np.ndarray, str]:
    root = job.calib_data or job.data
    images, _, where = for_job(job, "train", job.calib_images, root=root, seed=1)
    if root is None:
        job.log("  note: no --calib-data given: calibrating int8 on random images; accuracy will "
                "suffer, pass --calib-data ROOT (its train split) for real figures")
    return images, where


class _Reader:
    """onnxruntime CalibrationDataReader over prepared batches, with a progress bar.

    Read by :func:`calibrate_ranges`, which bounds the calibration session's memory.
    """

    def __init__(self, job: ExportJob, images: np.ndarray):
        from tqdm import tqdm

        self.name = job.input_name
        self.chunks = [c for c, _ in job_batches(job, job_input(job, images))]
        self.bar = tqdm(total=len(images), desc="  calibrating", unit="img", leave=False,
                        disable=None)
        self.counts = [min(len(c), len(images) - i * len(c)) for i, c in enumerate(self.chunks)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.chunks):
            self.bar.close()
            return None
        chunk = self.chunks[self.i]
        self.bar.update(max(0, self.counts[self.i]))
        self.i += 1
        return {self.name: chunk}

    def rewind(self):
        self.i = 0


class _One:
    """A reader of one batch (histogram calibrators are fed batch by batch)."""

    def __init__(self, batch: dict):
        self.batch: dict | None = batch

    def get_next(self):
        batch, self.batch = self.batch, None
        return batch


@contextlib.contextmanager
def _quiet_ort():
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _ranges_to_json(ort_cache: Path) -> dict[str, list[float]]:
    from onnxruntime.quantization.calibrate import load_tensors_data

    data = load_tensors_data(ort_cache)
    return {name: [float(np.asarray(td.range_value[0]).ravel()[0]), float(np.asarray(td.range_value[1]).ravel()[0])]
            for name, td in data.data.items()}


def _json_to_ort_cache(ranges: dict[str, list[float]], path: Path) -> None:
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    data = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for name, (lo, hi) in ranges.items()})
    save_tensors_data(data, path)


def calibrate_ranges(fp32_path: Path, reader: Any, ort_cache: Path, workdir: Path,
                     method: str = "minmax") -> None:
    """MinMax ranges of every activation of ``fp32_path`` → ``ort_cache`` (onnxruntime's cache JSON).

    The same calibrator ``quantize_static`` builds (ReduceMin/ReduceMax after each tensor of the
    op types it quantises, graph optimisations off), run by a session that keeps memory bounded:
    onnxruntime's own session keeps every activation of an image alive and grows its arena from
    image to image; ``ExecutionOrder.PRIORITY_BASED`` without an arena reduces each tensor as soon
    as it exists.  Same ranges (only the order of independent nodes changes); the peaks it
    replaced: bench/results/int8_design_notes.md.
    """
    import onnxruntime
    from onnxruntime.quantization.calibrate import MinMaxCalibrater, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from onnxruntime.quantization.calibrate import EntropyCalibrater, PercentileCalibrater

    base = {"minmax": MinMaxCalibrater, "percentile": PercentileCalibrater,
            "entropy": EntropyCalibrater}[method]

    class Bounded(base):  # type: ignore[misc, valid-type]
        def create_inference_session(self) -> None:
            so = onnxruntime.SessionOptions()
            so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
            so.execution_order = onnxruntime.ExecutionOrder.PRIORITY_BASED
            so.enable_cpu_mem_arena = False
            so.enable_mem_pattern = False
            if threads():
                so.intra_op_num_threads = threads()
            self.infer_session = onnxruntime.InferenceSession(
                self.augmented_model_path, sess_options=so, providers=self.execution_providers)

    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # quantize_static's default
    kwargs: dict[str, Any] = {} if method == "minmax" else {"symmetric": True}
    calibrator = Bounded(str(fp32_path), op_types, str(workdir / "augmented_model.onnx"), **kwargs)
    calibrator.augment_graph()
    calibrator.create_inference_session()
    if method == "minmax":
        calibrator.collect_data(reader)
        data = calibrator.compute_data()
    else:  # histograms merge batch by batch; onnxruntime would keep every batch's tensors
        with contextlib.redirect_stdout(io.StringIO()):  # its calibrators print() per batch
            while (batch := reader.get_next()) is not None:
                calibrator.collect_data(_One(batch))
            data = calibrator.compute_data()
        # quantize_static refuses a cache whose method differs from the one it is called with
        # (MinMax); the ranges are all it reads, so store them as a MinMax cache.
        _json_to_ort_cache({name: [float(np.asarray(td.range_value[0]).ravel()[0]),
                                   float(np.asarray(td.range_value[1]).ravel()[0])]
                            for name, td in data.data.items()}, ort_cache)
        return
    save_tensors_data(data, ort_cache)
    del calibrator


def quantize(fp32_path: Path, out_path: Path, job: ExportJob, *, ort_cache: Path,
             images: np.ndarray | None, exclude: list[str]) -> None:
    """quantize_static into ``out_path``; calibrates only when ``ort_cache`` does not exist
    (with :func:`calibrate_ranges`, whose memory does not grow with depth or image count)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if images is not None and not ort_cache.exists():
        with tempfile.TemporaryDirectory(prefix="cityseg-calib-") as work, _quiet_ort():
            calibrate_ranges(fp32_path, _Reader(job, images), ort_cache, Path(work), calibration_of(job))
    with _quiet_ort():
        quantize_static(
            str(fp32_path), str(out_path), None, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude or None,
            reduce_range=True,  # 7-bit weights: no vpmaddubsw saturation on non-VNNI x86 (above)
            calibration_cache_path=str(ort_cache),
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           # int32 bias Q/DQ: TensorRT's DequantizeLinear takes INT8/FP8/INT4 only
                           "QuantizeBias": False})  # ranges come from calibrate_ranges' cache


def _mean_err(job: ExportJob, fp32_path: Path, int8_path: Path, images: np.ndarray) -> float:
    from .verify import run_batched, runner

    # a trial carries its fp32 source's metadata (quantize_static keeps it): hand it the int8 one
    a = run_batched(job, runner(fp32_path, "onnx"), images).astype(np.float32)
    b = run_batched(job, runner(int8_path, "onnx", metadata=(job.meta, job.io("int8"))),
                    images).astype(np.float32)
    if job.argmax:
        return float((a != b).mean())
    return float(np.abs(a - b).mean())


def conv_nodes(model) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]


def choose_keep_fp32(job: ExportJob, fp32_path: Path, model, images: np.ndarray, ort_cache: Path,
                     tmpdir: Path) -> tuple[list[str], dict[str, Any]]:
    """``--keep-fp32`` → node names; ``auto`` keeps the first and the last Conv in fp32 each if
    excluding it alone cuts the int8 graph's mean logit error (up to 4 images) by ``AUTO_GAIN``."""
    spec = (job.keep_fp32 or "").strip()
    if not spec:
        return [], {}
    names = [n.name for n in model.graph.node]
    if spec != "auto":
        wanted = [s.strip() for s in spec.split(",") if s.strip()]
        for w in wanted:
            if w not in names:
                close = difflib.get_close_matches(w, names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else f"; nodes are e.g. {', '.join(conv_nodes(model)[:3])}"
                raise CitysegError(f"--keep-fp32 {w!r}: no node of that name in the graph{hint}")
        return wanted, {"keep_fp32": wanted}
    convs = conv_nodes(model)
    candidates = list(dict.fromkeys([convs[0], convs[-1]])) if convs else []
    probe = images[:4]
    errs: dict[str, float] = {}
    for label, exclude in [("none", [])] + [(c, [c]) for c in candidates]:
        trial = tmpdir / f"trial_{len(errs)}.onnx"
        quantize(fp32_path, trial, job, ort_cache=ort_cache, images=images, exclude=exclude)
        errs[label] = _mean_err(job, fp32_path, trial, probe)
    base = errs["none"]
    keep = [c for c in candidates if base > 0 and errs[c] <= (1 - AUTO_GAIN) * base]
    shown = ", ".join(f"{k}: {v:.4f}" for k, v in errs.items())
    job.log(f"  keep-fp32 auto: int8 error without/with each excluded ({shown}) → "
            f"{', '.join(keep) if keep else 'quantise all'}")
    return keep, {"keep_fp32": keep, "keep_fp32_errors": errs}


def build_int8_graph(job: ExportJob, tmp_out: Path, out: Path) -> dict[str, Any]:
    """fp32 graph → calibrated Q/DQ graph at ``tmp_out`` (metadata set); cache next to ``out``."""
    import onnx
    import onnxruntime

    from .graph import build_fp32_graph, set_metadata

    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cityseg-int8-") as d:
        tmpdir = Path(d)
        fp32_path = tmpdir / "fp32.onnx"
        fp32 = build_fp32_graph(job, fp32_path)
        images, where = calibration_images(job)
        key = {"version": CACHE_VERSION, "graph": job.settings_key(), "method": method_of(job),
               "onnxruntime": onnxruntime.__version__,
               "images": hashlib.sha256(images.tobytes()).hexdigest(), "n_images": int(len(images))}
        cache = cache_path(out)
        ort_cache = tmpdir / "ort_calib.json"
        hit = False
        if cache.is_file():
            try:
                stored = json.loads(cache.read_text())
                if stored.get("key") == key:
                    _json_to_ort_cache(stored["ranges"], ort_cache)
                    hit = True
            except (ValueError, KeyError, TypeError):
                hit = False
        if hit:
            job.log(f"  calibration: cached ranges from {cache.name} ({where}, {calibration_of(job)})")
        else:
            job.log(f"  calibration: {where}, {method_of(job)}")
            # Calibrate once (ranges of every tensor), then quantise from the ranges.
            quantize(fp32_path, tmp_out, job, ort_cache=ort_cache, images=images, exclude=[])
            write_text_atomic(cache, json.dumps({"key": key, "ranges": _ranges_to_json(ort_cache)},
                                                indent=1, sort_keys=True))
        keep, keep_info = choose_keep_fp32(job, fp32_path, fp32, images, ort_cache, tmpdir)
        info.update(keep_info)
        if hit or keep:
            quantize(fp32_path, tmp_out, job, ort_cache=ort_cache, images=images, exclude=keep)
    model = onnx.load(str(tmp_out))
    layout = job.int8_layout or "tensorrt"
    if layout == "onnxruntime":  # written in the form the onnxruntime runner would make at load
        from ..graphs.ort_int8 import prepare_qdq_for_onnxruntime

        changes = info["int8_layout_changes"] = prepare_qdq_for_onnxruntime(model)
        job.log(f"  layout: onnxruntime ({changes['relu_folded']} ReLU folded into Quantize, "
                f"{changes['uint8_activations']} more activations uint8) — fast in plain onnxruntime "
                "on x86; TensorRT cannot parse this form")
    set_metadata(model, job, "int8", calibration=where, calib_method=method_of(job), keep_fp32=keep,
                 int8_layout=layout)
    onnx.save(model, str(tmp_out))
    info.update({"calibration": where, "calibration_cached": hit, "calib_cache": str(cache),
                 "int8_layout": layout})
    return info


def export_int8(job: ExportJob, out: Path) -> ExportResult:
    from . import verify
    from .graph import check_model

    with Timer() as t, atomic_path(out) as tmp:
        info = build_int8_graph(job, tmp, out)
        check_model(tmp)
        checks = dict(info)
        if job.verify:
            checks.update(verify.check(job, tmp, "onnx", "int8", out.name))
    return ExportResult(out, "onnx", "int8", t.seconds, path_mb(out), checks)
