"""OpenVINO IR: ``<name>_openvino_model/`` with ``<name>.xml``, ``<name>.bin`` and ``metadata.json``.

Converted with ``openvino.convert_model`` from the project's ONNX (never from PyTorch directly,
so every backend runs the same graph).  Precisions:

- ``fp32``: weights stored fp32 (``compress_to_fp16=False``), inference precision f32;
- ``bf16``: the same IR with inference precision bf16 — refused on CPUs without native bf16
  (``system.machine.has_native_bf16``: OpenVINO would silently run f32);
- ``int8``: ``--int8-method qdq`` converts the project's calibrated Q/DQ ONNX (same calibration
  and cache as ``--format onnx --precision int8``); ``--int8-method nncf`` runs NNCF post-training
  quantisation on the fp32 IR with the same calibration images.

The inference precision is written into the IR's runtime info
(``rt_info["runtime_options"]["INFERENCE_PRECISION_HINT"]``, "f32" | "bf16") and into
``metadata.json``'s ``io.inference_precision_hint``: OpenVINO runs fp32 models in bf16 by default on
CPUs with AMX (DESIGN.md), so the runtime sets the hint explicitly from ``io.precision``.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import pack
from ..errors import CitysegError
from ..fileio import atomic_path, path_mb
from ..runtime.openvino_backend import HINT
from ..system.machine import has_native_bf16
from ..system.timing import Timer
from .images import job_batches, job_input
from .job import ExportJob
from .result import ExportResult

INT8_METHODS = ("qdq", "nncf")
DEFAULT_INT8_METHOD = "qdq"


def ir_name(folder: Path) -> str:
    return folder.name.removesuffix("_openvino_model") or "model"


# --calibration -> NNCF's activation range estimator: min/max over all images, or the mean of
# per-batch quantiles (NNCF has no whole-set percentile; entropy exists only on the Q/DQ path)
NNCF_ESTIMATORS = {"minmax": "MINMAX", "percentile": "MEAN_QUANTILE"}


def nncf_estimator_name(calibration: str | None) -> str:
    """The ``RangeEstimatorParametersSet`` member's name for ``--calibration`` (default minmax);
    checked before any work, without importing NNCF."""
    calibration = (calibration or "minmax").lower()
    if calibration not in NNCF_ESTIMATORS:
        raise CitysegError(f"--calibration {calibration} is not available with --int8-method nncf "
                           f"(NNCF offers minmax and percentile); use --int8-method qdq for entropy")
    return NNCF_ESTIMATORS[calibration]


def nncf_range_estimator(calibration: str | None):
    """The ``RangeEstimatorParametersSet`` member for ``--calibration``."""
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return getattr(RangeEstimatorParametersSet, nncf_estimator_name(calibration))


def _nncf_quantize(job: ExportJob, model, images: np.ndarray):
    """NNCF post-training quantisation with the settings of the Q/DQ path, for the same reasons:
    min/max activation ranges over all images (NNCF's per-image average clips segmentation heads'
    largest activations) and 7-bit weights everywhere (``OverflowFix.ENABLE``: int8 kernels without
    VNNI saturate).  Figures: bench/results/int8_calibration_notes.md."""
    try:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    except ImportError:
        raise CitysegError("--int8-method nncf needs NNCF: pip install 'cityseg-deploy[cpu]' "
                           "(or pip install nncf)") from None
    estimator = nncf_range_estimator(job.calibration)
    batches = [c for c, _ in job_batches(job, job_input(job, images))]
    dataset = nncf.Dataset(batches)
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.ENABLE,
        activations_range_estimator_params=estimator)
    extra = {}
    if job.ignored_scope:  # accuracy control: these ops stay float (validate=False: names may vanish)
        # OpenVINO names an ONNX Conv's Convolution "<node>/WithoutBiases" and its bias Add "<node>"
        extra["ignored_scope"] = nncf.IgnoredScope(
            patterns=[f"^{re.escape(n)}(/.*)?$" for n in job.ignored_scope], validate=False)
    return nncf.quantize(model, dataset, subset_size=len(images),
                         preset=nncf.QuantizationPreset.PERFORMANCE, advanced_parameters=advanced,
                         **extra)


def export_openvino(job: ExportJob, out: Path, precision: str = "fp32") -> ExportResult:
    import openvino as ov

    from . import verify
    from .graph import build_fp32_graph
    from .quantize import build_int8_graph, calibration_images

    if precision == "bf16" and not has_native_bf16():
        raise CitysegError("--precision bf16: this CPU has no BF16 support (needs AVX512-BF16 or "
                           "AMX); OpenVINO would run f32 — export fp32 or int8 here, bf16 on such a "
                           "machine")
    method = (job.int8_method or DEFAULT_INT8_METHOD).lower() if precision == "int8" else None
    if method is not None and method not in INT8_METHODS:
        raise CitysegError(f"--int8-method {job.int8_method!r}: choose {' or '.join(INT8_METHODS)}")
    if method == "nncf":
        nncf_estimator_name(job.calibration)  # a wrong --calibration fails before any work
    name = ir_name(out)
    extra: dict[str, Any] = {"inference_precision_hint": HINT[precision]}
    checks: dict[str, Any] = {}
    with Timer() as t, atomic_path(out, is_dir=True) as tmp, \
            tempfile.TemporaryDirectory(prefix="cityseg-ov-") as work:
        onnx_path = Path(work) / f"{name}.onnx"
        if method == "qdq":
            # The cache sits where the ONNX int8 export keeps it: <stem>_int8.calib.json.
            checks.update(build_int8_graph(job, onnx_path, out.with_name(name + ".onnx")))
        elif job.source_onnx is not None:
            onnx_path = job.source_onnx
        else:
            build_fp32_graph(job, onnx_path)
        model = ov.convert_model(str(onnx_path))
        if method == "nncf":
            images, where = calibration_images(job)
            job.log(f"  calibration (NNCF): {where}")
            model = _nncf_quantize(job, model, images)
            checks["calibration"] = where
        if method:
            extra["int8_method"] = method
        model.set_rt_info(HINT[precision], ["runtime_options", "INFERENCE_PRECISION_HINT"])
        xml = tmp / f"{name}.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        (tmp / "metadata.json").write_text(pack(job.meta, job.io(precision, **extra)))
        ov.Core().read_model(str(xml))  # loads back
        if job.verify:  # bf16 got here only where the CPU runs it (refused above otherwise)
            checks.update(verify.check(job, tmp, "openvino", precision, out.name))
    return ExportResult(out, "openvino", precision, t.seconds, path_mb(out), checks)
