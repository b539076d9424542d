"""TensorRT engine from the project's ONNX, with the TensorRT Python API (10.x / 11.x).

- **Strongly typed** network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): TensorRT 11 has
  no ``BuilderFlag.FP16/INT8`` and no calibrator; the precision is what the graph says — the fp32,
  fp16 (casts at the edges) or int8 Q/DQ ONNX made by this package (DESIGN.md);
- an optimisation profile min/opt/max for dynamic graphs (batch 1..2·batch, H/W ½..2× the export
  size, opt = the export shape);
- ``set_memory_pool_limit(WORKSPACE, workspace_gb)``, ``builder_optimization_level`` and a timing
  cache file ``<engine>.timing.cache`` reused by later builds;
- the engine file is a pure plan (loadable by trtexec/Triton); metadata goes to the sidecar
  ``<engine>.json`` with TensorRT, CUDA and GPU versions, swapped in with the engine as one pair
  (``fileio.atomic_pair``); the engine's sha256 goes on the trust list (``trust.py``).

The graph passes the static operator check (trt_ops) before the builder runs.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..artifacts import pack, sidecar_path
from ..errors import CitysegError
from ..fileio import atomic_pair, path_mb, write_bytes_atomic
from ..trust import record
from ..system.timing import Timer
from .job import ExportJob
from .result import ExportResult

NOT_INSTALLED = ("TensorRT is not installed: pip install 'cityseg-deploy[gpu]' on a machine with an "
                 "NVIDIA GPU and the TensorRT 10+ libraries (or export --format onnx here and build "
                 "the engine there)")
NO_GPU = ("--format trt needs a CUDA GPU: none is visible to PyTorch here; export --format onnx "
          "and build the engine on the GPU machine")


def require_tensorrt():
    """The ``tensorrt`` module, or the CitysegError saying what to install / where to run."""
    try:
        import tensorrt as trt  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError or a broken install without libnvinfer
        raise CitysegError(NOT_INSTALLED) from None
    import torch

    if not torch.cuda.is_available():
        raise CitysegError(NO_GPU)
    return trt


def profile_shapes(job: ExportJob) -> dict[str, tuple[tuple[int, ...], ...]]:
    """min/opt/max of the input for a dynamic graph."""
    h, w = job.size
    opt = job.example_shape()
    lo = (1, max(8, h // 2 // 8 * 8), max(8, w // 2 // 8 * 8))
    hi = (max(2 * job.batch, 1), 2 * h, 2 * w)
    if job.preprocess:
        return {job.input_name: ((lo[0], lo[1], lo[2], 3), opt, (hi[0], hi[1], hi[2], 3))}
    return {job.input_name: ((lo[0], 3, lo[1], lo[2]), opt, (hi[0], 3, hi[1], hi[2]))}


def build_engine(onnx_path: Path, job: ExportJob, timing_cache: Path) -> tuple[bytes, dict[str, Any]]:
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CitysegError(f"{onnx_path.name}: TensorRT's ONNX parser failed: {errors[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(job.workspace_gb * (1 << 30)))
    config.builder_optimization_level = int(job.opt_level)
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    shapes: dict[str, Any] = {}
    if job.dynamic:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes(job).items():
            profile.set_shape(name, lo, opt, hi)
            shapes[name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise CitysegError(f"{onnx_path.name}: TensorRT could not build an engine (see the log above); "
                           f"try a smaller --workspace or a static shape")
    write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan), {"profile": shapes}


def versions() -> dict[str, Any]:
    import tensorrt as trt
    import torch

    props = torch.cuda.get_device_properties(0)
    return {"tensorrt_version": trt.__version__, "cuda_version": torch.version.cuda,
            "gpu": props.name, "compute_capability": f"{props.major}.{props.minor}"}


def export_trt(job: ExportJob, out: Path, precision: str = "fp32") -> ExportResult:
    import onnx

    from . import verify
    from .trt_ops import assert_tensorrt_compatible

    require_tensorrt()
    intermediates: list[ExportResult] = []
    with tempfile.TemporaryDirectory(prefix="cityseg-trt-") as work, Timer() as t:
        if job.source_onnx is not None:
            onnx_path = job.source_onnx
        else:
            # The graph that states the precision, written next to the engine as well (trtexec).
            from .onnx import export_onnx
            from . import default_output, get_format

            onnx_out = default_output(out.with_suffix(".pt"), get_format("onnx"), precision)
            res = export_onnx(job, onnx_out, precision)
            intermediates.append(res)
            onnx_path = res.path
        assert_tensorrt_compatible(onnx.load(str(onnx_path)), onnx_path.name)
        timing_cache = out.with_name(out.name + ".timing.cache")
        plan, info = build_engine(onnx_path, job, timing_cache)
        checks: dict[str, Any] = dict(info)
        io_ = job.io(precision, **versions(), profile=info["profile"], onnx=onnx_path.name)
        # engine and sidecar swapped in as a pair (fileio.atomic_pair); the engine's bytes go on
        # the trust list first (trust.py), so the runtime loads what this export built
        with atomic_pair(out, sidecar_path(out)) as (tmp, side_tmp):
            tmp.write_bytes(plan)
            io_["package_sha256"] = record(out, "tensorrt", plan)
            if job.verify:  # the runtime's runner, handed the sidecar it will get
                checks.update(verify.check(job, tmp, "tensorrt", precision, out.name,
                                           metadata=(job.meta, io_), device=job.device))
            side_tmp.write_text(pack(job.meta, io_))
        _ = work
    return ExportResult(out, "trt", precision, t.seconds, path_mb(out, sidecar_path(out)),
                        checks, intermediates)
