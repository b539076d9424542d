"""``cityseg export MODEL --format triton --out REPO``: a Triton Inference Server model repository.

Layout (Triton's): ``REPO/<name>/config.pbtxt`` and ``REPO/<name>/1/`` holding the model file —
``model.onnx`` (``platform: "onnxruntime_onnx"``), ``model.plan`` (``platform:
"tensorrt_plan"``) or ``model.xml`` + ``model.bin`` (``backend: "openvino"``).  MODEL is a
checkpoint (exported to ONNX first, batch dynamic), an ``.onnx``, an OpenVINO IR or a TensorRT
engine.  Inputs and outputs are read from the graph itself (names, data types, dims; ``-1``
where the graph leaves a dimension free); ``max_batch_size`` > 0 only when the batch dimension is
free (then dims omit it and ``dynamic_batching`` is on); the artifact's metadata (classes,
palette, normalisation, input size and format) rides along as ``parameters``, so a client of
the repository needs no other file.

Why write the text ourselves: exporting needs no Triton package; :func:`verify_model_dir`
checks what was written with Triton's own schema (``tritonclient``'s ``model_config_pb2``
through protobuf's text format) and against the model file.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import artifact_kind, openvino_files, read_artifact_meta
from ..errors import CitysegError
from ..fileio import atomic_path, path_mb
from ..formats import triton_platforms
from .result import ExportResult

#: ONNX TensorProto element type -> Triton data type
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
                  6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64",
                  12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}
#: OpenVINO element type name -> Triton data type
OV_TO_TRITON = {"f32": "TYPE_FP32", "f16": "TYPE_FP16", "bf16": "TYPE_BF16", "u8": "TYPE_UINT8",
                "i8": "TYPE_INT8", "i32": "TYPE_INT32", "i64": "TYPE_INT64", "boolean": "TYPE_BOOL",
                "f64": "TYPE_FP64", "u16": "TYPE_UINT16", "i16": "TYPE_INT16"}
#: artifact kind -> (config key, platform or backend, model file): the formats registry's ``triton``
PLATFORM = triton_platforms()


@dataclass
class Tensor:
    """One graph input/output as Triton declares it (dims with the batch dimension)."""

    name: str
    data_type: str
    dims: list[int]


def _onnx_io(path: Path) -> tuple[list[Tensor], list[Tensor]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}

    def tensors(values) -> list[Tensor]:
        out = []
        for v in values:
            if v.name in init:
                continue
            tt = v.type.tensor_type
            if tt.elem_type not in ONNX_TO_TRITON:
                raise CitysegError(f"{path}: tensor {v.name!r} has ONNX type {tt.elem_type}, which "
                                   f"Triton has no data type for")
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            out.append(Tensor(v.name, ONNX_TO_TRITON[tt.elem_type], dims))
        return out

    return tensors(model.graph.input), tensors(model.graph.output)


def _openvino_io(xml: Path) -> tuple[list[Tensor], list[Tensor]]:
    import openvino as ov

    model = ov.Core().read_model(str(xml))

    def tensors(ports) -> list[Tensor]:
        out = []
        for port in ports:
            dtype = port.get_element_type().get_type_name()
            if dtype not in OV_TO_TRITON:
                raise CitysegError(f"{xml}: tensor {port.get_any_name()!r} has type {dtype}, which "
                                   f"Triton has no data type for")
            dims = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
            out.append(Tensor(port.get_any_name(), OV_TO_TRITON[dtype], dims))
        return out

    return tensors(model.inputs), tensors(model.outputs)


def _tensorrt_io(path: Path) -> tuple[list[Tensor], list[Tensor]]:
    from ..trust import read_trusted

    plan, _ = read_trusted(path, "tensorrt")  # an engine may carry plugin code: trusted ones only
    try:
        import tensorrt as trt
    except ImportError:
        raise CitysegError(f"{path}: reading a TensorRT engine's inputs and outputs needs the "
                           f"tensorrt package (the 'gpu' extra) on a machine with its libraries") from None
    types = {trt.float32: "TYPE_FP32", trt.float16: "TYPE_FP16", trt.int8: "TYPE_INT8",
             trt.int32: "TYPE_INT32", trt.uint8: "TYPE_UINT8", trt.bool: "TYPE_BOOL"}
    if hasattr(trt, "int64"):
        types[trt.int64] = "TYPE_INT64"
    if hasattr(trt, "bfloat16"):
        types[trt.bfloat16] = "TYPE_BF16"
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise CitysegError(f"{path}: not a TensorRT engine this TensorRT can read")
    ins, outs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        t = Tensor(name, types[engine.get_tensor_dtype(name)], list(engine.get_tensor_shape(name)))
        (ins if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outs).append(t)
    return ins, outs


def model_io(kind: str, path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """Inputs and outputs as the model file declares them."""
    if kind == "onnx":
        return _onnx_io(path)
    if kind == "openvino":
        return _openvino_io(path)
    if kind == "tensorrt":
        return _tensorrt_io(path)
    raise CitysegError(f"{path}: a {kind} artifact has no Triton backend; give a checkpoint, .onnx, "
                       f"OpenVINO IR or TensorRT engine")


def _quote(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid protobuf text-format string


def _tensor_text(t: Tensor, batched: bool) -> str:
    dims = t.dims[1:] if batched else t.dims
    return (f"  {{\n    name: {_quote(t.name)}\n    data_type: {t.data_type}\n"
            f"    dims: [ {', '.join(str(d) for d in dims)} ]\n  }}")


def config_text(name: str, kind: str, inputs: list[Tensor], outputs: list[Tensor], *, max_batch: int,
                instance_kind: str, instances: int, parameters: dict[str, str],
                batch_wait_us: int = 2000, warmup_size: tuple[int, int] | None = None) -> str:
    """The ``config.pbtxt`` text (Triton's ModelConfig in protobuf text format).

    ``warmup_size``: (H, W) that replaces free height/width dims in the warm-up sample (zeros
    through every input, batch 1), so the first client does not pay the model's first run."""
    key, value, filename = PLATFORM[kind]
    batched = max_batch > 0
    lines = [f"name: {_quote(name)}", f"{key}: {_quote(value)}", f"max_batch_size: {max_batch if batched else 0}"]
    if kind == "openvino":
        lines.append(f"default_model_filename: {_quote(filename)}")
    lines.append("input [\n" + ",\n".join(_tensor_text(t, batched) for t in inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor_text(t, batched) for t in outputs) + "\n]")
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {instance_kind}\n  }}\n]")
    if batched:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {batch_wait_us}\n}}")
    if warmup_size is not None:
        lines.append(_warmup_text(inputs, batched, warmup_size))
    for k, v in parameters.items():
        lines.append(f"parameters {{\n  key: {_quote(k)}\n  value {{\n    string_value: {_quote(v)}\n  }}\n}}")
    return "\n".join(lines) + "\n"


def _warmup_text(inputs: list[Tensor], batched: bool, size: tuple[int, int]) -> str:
    """``model_warmup``: one all-zeros request of batch 1 at the model's input size."""
    entries = []
    for t in inputs:
        dims = list(t.dims[1:] if batched else t.dims)
        if not batched and dims and dims[0] == -1:
            dims[0] = 1
        free = [i for i, d in enumerate(dims) if d == -1]
        for i, value in zip(free, size):  # NHWC: H, W lead; NCHW: after C — free dims in order
            dims[i] = int(value)
        if any(d <= 0 for d in dims):
            raise CitysegError(f"tensor {t.name!r} dims {t.dims}: no warm-up shape (more than H and W free)")
        entries.append(f"  inputs {{\n    key: {_quote(t.name)}\n    value {{\n      data_type: {t.data_type}\n"
                       f"      dims: [ {', '.join(map(str, dims))} ]\n      zero_data: true\n    }}\n  }}")
    return ("model_warmup [\n  {\n    name: \"zeros\"\n    batch_size: 1\n" + "\n".join(entries)
            + "\n  }\n]")


def metadata_parameters(meta, io: dict[str, Any]) -> dict[str, str]:
    """The artifact's metadata as Triton ``parameters`` (string values; lists as JSON)."""
    return {"cityseg_arch": meta.arch, "cityseg_label_set": meta.label_set,
            "cityseg_classes": json.dumps(list(meta.class_names)),
            "cityseg_palette": json.dumps([list(c) for c in meta.palette]),
            "cityseg_mean": json.dumps(list(meta.mean)), "cityseg_std": json.dumps(list(meta.std)),
            "cityseg_input_size": json.dumps(list(io.get("size") or meta.input_size)),
            "cityseg_input_format": str(io.get("input", "float_nchw")),
            "cityseg_output": str(io.get("output", "logits")),
            "cityseg_precision": str(io.get("precision", "fp32"))}


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "cityseg"
    return name


def export_triton(model: str | Path, repo: str | Path, *, name: str | None = None,
                  max_batch: int | None = None, device: str | None = None, instances: int = 1,
                  overwrite: bool = False, logits: bool = False, log=lambda *_: None,
                  **onnx_options: Any) -> Path:
    """Write ``repo/<name>/`` (config + version 1) for ``model``; returns the model folder.

    A checkpoint is exported to ONNX first (``onnx_options`` go to that export; batch dynamic
    unless ``dynamic=False``), by default with ``preprocess`` and ``argmax`` in the graph: uint8
    NHWC pixels in, uint8 labels out — 0.4 MB in and 0.1 MB out per 256x512 image where float
    in and logits out move 1.6 MB and 10 MB (``logits=True`` keeps the float graph).
    ``max_batch``: Triton's ``max_batch_size`` — default 8 when the graph's batch is free, 0 for a
    static graph; a value above a static graph's batch is refused (it would silently be 0).
    ``device``: ``cuda`` → ``KIND_GPU`` instances, ``cpu`` → ``KIND_CPU`` (default: GPU for a
    TensorRT engine, CPU otherwise); ``instances``: the instance group's count.  An int8 ONNX graph
    for CPU instances is written in the form cityseg's onnxruntime runner rewrites it to
    (:mod:`cityseg_deploy.graphs.ort_int8`), so Triton's labels equal ``cityseg predict``'s.
    An existing ``repo/<name>`` is refused unless ``overwrite`` (a second model of the same file
    stem needs ``name``).  Written atomically; checked with :func:`verify_model_dir` when
    ``tritonclient`` is installed.
    """
    import tempfile

    from ..deploy import artifact_of, is_deploy_folder

    name = name or (Path(model).name if is_deploy_folder(model) else None)
    source = artifact_of(model)  # a deploy folder: the artifact it chose
    kind = artifact_kind(source)
    if max_batch is not None and max_batch < 0:
        raise CitysegError(f"--batch {max_batch}: must be >= 0")
    if instances < 1:
        raise CitysegError(f"--instances {instances}: must be >= 1")
    name = _safe_name(name or source.name.removesuffix("_openvino_model").rsplit(".", 1)[0])
    folder = Path(repo) / name
    if folder.exists() and not overwrite:
        raise CitysegError(f"{folder} exists (Triton model {name!r}); give --name NAME for another "
                           f"model in this repository, or --overwrite to replace it")
    with tempfile.TemporaryDirectory(prefix="cityseg-triton-") as scratch:
        if kind in ("torch",):
            from . import export

            onnx_options.setdefault("dynamic", True)
            if not logits:
                onnx_options.setdefault("preprocess", True)
                onnx_options.setdefault("argmax", True)
            onnx_options.pop("format", None)
            res = export(source, format="onnx", out=str(Path(scratch) / f"{source.stem}.onnx"), log=log,
                         **onnx_options)
            artifact, kind = Path(res.path), "onnx"
        elif onnx_options or logits:
            given = sorted(onnx_options) + (["logits"] if logits else [])
            raise CitysegError(f"{source}: {', '.join(given)} apply when exporting a "
                               f"checkpoint; this {kind} artifact is copied as it is")
        else:
            artifact = source
        if kind not in PLATFORM:
            raise CitysegError(f"{source}: a {kind} artifact has no Triton backend; give a checkpoint, "
                               f".onnx, OpenVINO IR or TensorRT engine")
        meta, io = read_artifact_meta(artifact)
        files = openvino_files(artifact)[:2] if kind == "openvino" else (artifact,)
        inputs, outputs = model_io(kind, files[0])
        batch_free = all(t.dims and t.dims[0] == -1 for t in inputs + outputs)
        static = None if batch_free else (inputs[0].dims[0] if inputs and inputs[0].dims else 1)
        if max_batch is None:
            max_batch = 8 if batch_free else 0
            if not batch_free:
                log(f"{source.name}: a static batch-{static} graph: max_batch_size 0 (no dynamic "
                    f"batching); export the checkpoint with --format triton for a batch-dynamic one")
        elif not batch_free and max_batch > 0:
            raise CitysegError(f"--batch {max_batch}: {source} is a static batch-{static} graph, so "
                               f"Triton could not batch it (max_batch_size would be 0); export the "
                               f"checkpoint with --format triton (batch dynamic), or drop --batch")
        if io.get("input") != "uint8_nhwc" or io.get("output") != "labels":
            log(f"{source.name}: takes {io.get('input', 'float_nchw')} and returns {io.get('output', 'logits')}; "
                f"export the checkpoint with --format triton for uint8 pixels in and labels out")
        instance_kind = ("KIND_GPU" if (device or ("cuda" if kind == "tensorrt" else "cpu")).startswith("cuda")
                         else "KIND_CPU")
        params = metadata_parameters(meta, io)
        model_bytes = None
        if kind == "onnx" and instance_kind == "KIND_CPU" and io.get("precision") == "int8":
            from ..graphs.ort_int8 import onnxruntime_cpu_graph

            graph, changes = onnxruntime_cpu_graph(files[0])
            if changes:
                model_bytes = graph
                params["cityseg_ort_cpu_rewrite"] = json.dumps(changes)
        size = tuple(io.get("size") or meta.input_size)
        text = config_text(name, kind, inputs, outputs, max_batch=max_batch, instance_kind=instance_kind,
                           instances=instances, parameters=params, warmup_size=(int(size[0]), int(size[1])))
        with atomic_path(folder, is_dir=True) as tmp:
            (tmp / "1").mkdir()
            (tmp / "config.pbtxt").write_text(text)
            target = tmp / "1" / PLATFORM[kind][2]
            if model_bytes is not None:
                target.write_bytes(model_bytes)
            else:
                shutil.copyfile(files[0], target)
            if kind == "openvino":
                shutil.copyfile(files[1], tmp / "1" / "model.bin")
            try:
                verify_model_dir(tmp, name=name)
            except ImportError:
                log("tritonclient not installed: config.pbtxt not checked against Triton's schema")
    log(f"triton model {name}: {folder} ({PLATFORM[kind][1]}, max_batch_size {max_batch}, "
        f"{instances} x {instance_kind})")
    return folder


def export_triton_repo(model: str | Path, out: str | Path | None, precision: str = "fp32", *,
                       log=lambda *_: None, batch: int | None = None, device: str | None = None,
                       **options: Any) -> ExportResult:
    """The ``triton`` format's exporter (formats.py): ``export(MODEL, format="triton", out=REPO)``.

    ``batch`` is the repository's ``max_batch_size`` [8 for a free batch, 0 for a static graph;
    refused above a static graph's batch]; ``name``, ``instances``, ``overwrite`` and ``logits`` are
    :func:`export_triton`'s; the other options given (not None or False) go to the ONNX export of
    a checkpoint, as :func:`export_triton` says.
    """
    import time

    if not out:
        raise CitysegError("--format triton writes a model repository: give --out REPO")
    given = {k: v for k, v in options.items() if v is not None}  # dynamic None: batch left free
    if precision != "fp32":
        given["precision"] = precision
    start = time.perf_counter()
    own = {k: given.pop(k) for k in ("name", "instances", "overwrite", "logits") if k in given}
    folder = export_triton(model, out, max_batch=batch, device=device, log=log, **own, **given)
    return ExportResult(folder, "triton", precision, time.perf_counter() - start, path_mb(folder) or 0.0)


def parse_config(path: Path):
    """``config.pbtxt`` parsed with Triton's schema (ImportError without ``tritonclient``)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise CitysegError(f"{path}: not a valid Triton model config ({exc})") from None


def verify_model_dir(folder: str | Path, *, name: str | None = None) -> dict[str, Any]:
    """Check a model folder: config valid under Triton's schema, every declared input/output equal
    (name, data type, dims) to the model file's.  Returns a summary; CitysegError on a mismatch."""
    from tritonclient.grpc import model_config_pb2

    folder = Path(folder)
    cfg = parse_config(folder / "config.pbtxt")
    if name is not None and cfg.name != name:
        raise CitysegError(f"{folder}: config names {cfg.name!r}, expected {name!r}")
    kind = next((k for k, (key, value, _) in PLATFORM.items()
                 if value == (cfg.platform if key == "platform" else cfg.backend)), None)
    if kind is None:
        raise CitysegError(f"{folder}: unknown platform {cfg.platform!r} / backend {cfg.backend!r}")
    model_file = folder / "1" / PLATFORM[kind][2]
    if not model_file.is_file():
        raise CitysegError(f"{model_file}: missing")
    inputs, outputs = model_io(kind, model_file)
    batched = cfg.max_batch_size > 0
    for declared, actual, what in ((cfg.input, inputs, "input"), (cfg.output, outputs, "output")):
        if len(declared) != len(actual):
            raise CitysegError(f"{folder}: config declares {len(declared)} {what}s, the model has {len(actual)}")
        by_name = {t.name: t for t in actual}
        for d in declared:
            t = by_name.get(d.name)
            if t is None:
                raise CitysegError(f"{folder}: {what} {d.name!r} is not in the model (it has {sorted(by_name)})")
            dtype = model_config_pb2.DataType.Name(d.data_type)
            dims = ([-1] if batched else []) + list(d.dims)
            if dtype != t.data_type or dims != t.dims:
                raise CitysegError(f"{folder}: {what} {d.name!r} declared {dtype} {dims}, the model has "
                                   f"{t.data_type} {t.dims}")
    return {"name": cfg.name, "platform": cfg.platform or cfg.backend, "max_batch_size": cfg.max_batch_size,
            "inputs": [t.__dict__ for t in inputs], "outputs": [t.__dict__ for t in outputs],
            "parameters": {k: v.string_value for k, v in cfg.parameters.items()}}
