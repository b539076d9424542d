"""OpenVINO IR: ``<name>_openvino_model/`` with ``<name>.xml``, ``<name>.bin`` and ``metadata.json``.

Converted with ``openvino.convert_model`` from the project's ONNX (never from PyTorch directly,
so every backend runs the same graph).  Precisions:

- ``fp32``: weights stored fp32 (``compress_to_fp16=False``), inference precision f32;
- ``bf16``: the same IR with inference precision bf16 — refused on CPUs whose
  ``OPTIMIZATION_CAPABILITIES`` lack ``BF16`` (it would silently run f32);
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
from ..fileio import atomic_path
from ..system.timing import Timer
from .job import ExportJob, path_size_mb
from .result import ExportResult

HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: layers left in float run f32
INT8_METHODS = ("qdq", "nncf")
DEFAULT_INT8_METHOD = "qdq"


def has_bf16(device: str = "CPU") -> bool:
    import openvino as ov

    try:
        return "BF16" in ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - no such device
        return False


def ir_name(folder: Path) -> str:
    return folder.name.removesuffix("_openvino_model") or "model"


def compile_ir(xml: Path, hint: str = "f32"):
    import openvino as ov

    from ..system.machine import session_threads as threads

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint}
    if threads():
        config["INFERENCE_NUM_THREADS"] = threads()
    return ov.Core().compile_model(str(xml), "CPU", config)


def ov_runner(xml: Path, hint: str = "f32"):
    compiled = compile_ir(xml, hint)
    return lambda x: compiled(x)[0]


def _nncf_quantize(job: ExportJob, model, images: np.ndarray):
    """NNCF post-training quantisation with the settings of the Q/DQ path, for the same reasons.

    - Activation ranges: the min/max over all calibration images (``RangeEstimatorParametersSet.
      MINMAX``, as onnxruntime's MinMax calibration of ``--int8-method qdq``).  NNCF's default
      averages per-image extremes, which clips the largest activations of segmentation heads;
    - ``OverflowFix.ENABLE``: 7-bit weights in every layer, not only the first (NNCF's default),
      because int8 kernels without VNNI (AVX2, AVX-512 without VNNI) saturate their int16 pair
      sums, as in ``export/quantize.py``.

    Measured on an AMD EPYC (avx2, no VNNI), OpenVINO 2026.4, NNCF 3.4, val images of the
    synthetic set (argmax agreement with PyTorch fp32 / relative logit error), default → these:
    denseaspp_small trained 98.5 % / 0.154 → 99.2 % / 0.042; unet_small trained 98.6 % / 0.190 →
    98.8 % / 0.051; deeplabv3_small trained 99.3 % / 0.094 → 99.5 % / 0.033; denseaspp_small
    random weights 89.7 % / 0.390 → 96.7 % / 0.050.
    """
    try:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    except ImportError:
        raise CitysegError("--int8-method nncf needs NNCF: pip install 'cityseg-deploy[cpu]' "
                           "(or pip install nncf)") from None
    calibration = (job.calibration or "minmax").lower()
    estimators = {"minmax": RangeEstimatorParametersSet.MINMAX,
                  "percentile": RangeEstimatorParametersSet.QUANTILE}
    if calibration not in estimators:
        raise CitysegError(f"--calibration {calibration} is not available with --int8-method nncf "
                           f"(NNCF offers minmax and percentile); use --int8-method qdq for entropy")
    batches = [c for c, _ in job.batches(job.to_input(images))]
    dataset = nncf.Dataset(batches)
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.ENABLE,
        activations_range_estimator_params=estimators[calibration])
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

    if precision == "bf16" and not has_bf16():
        raise CitysegError("--precision bf16: this CPU has no BF16 support (OpenVINO "
                           "OPTIMIZATION_CAPABILITIES lacks BF16; needs AVX512-BF16 or AMX); it "
                           "would run f32 — export fp32 or int8 here, bf16 on such a machine")
    method = (job.int8_method or DEFAULT_INT8_METHOD).lower() if precision == "int8" else None
    if method is not None and method not in INT8_METHODS:
        raise CitysegError(f"--int8-method {job.int8_method!r}: choose {' or '.join(INT8_METHODS)}")
    name = ir_name(out)
    extra: dict[str, Any] = {"inference_precision_hint": HINTS[precision]}
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
        model.set_rt_info(HINTS[precision], ["runtime_options", "INFERENCE_PRECISION_HINT"])
        xml = tmp / f"{name}.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        (tmp / "metadata.json").write_text(pack(job.meta, job.io(precision, **extra)))
        ov.Core().read_model(str(xml))  # loads back
        if job.verify and precision != "bf16" or (job.verify and has_bf16()):
            checks.update(verify.check(job, ov_runner(xml, HINTS[precision]), precision, out.name))
    return ExportResult(out, "openvino", precision, t.seconds, path_size_mb(out), checks)
