"""Does an artifact's metadata describe its graph?  Checked at load, before any backend runs it.

Why: the metadata (ONNX ``metadata_props``, OpenVINO ``metadata.json``, the ``.pt2.json`` sidecar)
was trusted as written: a wrong input size, input dtype or class count gave backend tracebacks
in eval/check/predict/segment, and an fp32 graph whose metadata claimed int8 was benchmarked and
reported as int8.  Each check compares one field with what the graph itself declares and names
the file and the field when they differ.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import CitysegError

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
           "MatMulInteger", "DynamicQuantizeLinear"}
ONNX_FLOAT, ONNX_UINT8, ONNX_INT32, ONNX_INT64, ONNX_FLOAT16 = 1, 2, 6, 7, 10
ONNX_TYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 16: "bfloat16"}


def _refuse(where: str, field: str, claimed: Any, actual: Any) -> CitysegError:
    return CitysegError(f"{where}: metadata field {field!r} says {claimed}, but the graph has "
                        f"{actual}; the metadata does not describe this graph — re-export it")


def _expected_shapes(meta, io: dict[str, Any]) -> tuple[list[int | None], list[int | None]]:
    """(input dims, output dims) the metadata promises; None where a dim may vary."""
    h, w = (int(v) for v in (io.get("size") or meta.input_size))
    dynamic = bool(io.get("dynamic"))
    n = None if dynamic else int(io.get("batch", 1))
    hh, ww = (None, None) if dynamic else (h, w)
    inp = [n, hh, ww, 3] if io.get("input") == "uint8_nhwc" else [n, 3, hh, ww]
    out = [n, meta.num_classes, hh, ww] if io.get("output", "logits") == "logits" else [n, hh, ww]
    return inp, out


def _check_dims(where: str, what: str, claimed: Sequence[int | None], actual: Sequence[int | None],
                names: Sequence[str], *, labels_out: bool = False) -> None:
    """Static dims of the graph against the metadata's; a dynamic dim (None) fits anything."""
    if labels_out and len(actual) == 4 and actual[1] in (1, None):
        actual = [actual[0], *actual[2:]]  # labels as N×1×H×W
    if len(actual) != len(claimed):
        raise _refuse(where, what, f"a rank-{len(claimed)} tensor", f"rank {len(actual)} ({list(actual)})")
    for name, want, got in zip(names, claimed, actual):
        if want is not None and got is not None and int(want) != int(got):
            raise _refuse(where, name, want, f"{got} in {what} {list(actual)}")


def _names(io: dict[str, Any], kind: str) -> list[str]:
    """Which metadata field each dim comes from, for the error message."""
    if kind == "input":
        return (["batch", "size[0] (height)", "size[1] (width)", "input (channels)"]
                if io.get("input") == "uint8_nhwc" else
                ["batch", "input (channels)", "size[0] (height)", "size[1] (width)"])
    if io.get("output", "logits") == "logits":
        return ["batch", "class_names (class count)", "size[0] (height)", "size[1] (width)"]
    return ["batch", "size[0] (height)", "size[1] (width)"]


def check_pairing(path, io: dict[str, Any], digest: str) -> None:
    """A sidecar that names its file's sha256 (exports since issue 27) describes that file only.

    Why: a ``.pt2``/engine and its ``.json`` are replaced as a pair, but a copy by hand can still
    put one package next to another's sidecar; the sizes and classes would then be believed.
    """
    claimed = io.get("package_sha256")
    if claimed is not None and claimed != digest:
        raise CitysegError(f"{path}.json: this sidecar describes another file (sha256 "
                           f"{str(claimed)[:16]}..., the file is {digest[:16]}...); keep each "
                           f"package with its own sidecar, or re-export it")


def check_onnx(path, meta, io: dict[str, Any]) -> None:
    """Input/output names, dtypes and static dims, Q/DQ for int8, fp16 tensors for fp16."""
    import onnx

    where = str(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file
        raise CitysegError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) < 1:
        raise CitysegError(f"{path}: a cityseg graph has one input and a first output; this one has "
                           f"{len(inputs)} inputs and {len(graph.output)} outputs — re-export it")
    inp, out = inputs[0], graph.output[0]
    for field, value in (("input_name", inp.name), ("output_name", out.name)):
        if io.get(field) is not None and io[field] != value:
            raise _refuse(where, field, repr(io[field]), repr(value))

    def dims(v) -> list[int | None]:
        return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in v.type.tensor_type.shape.dim]

    in_type = inp.type.tensor_type.elem_type
    wanted = {ONNX_UINT8} if io.get("input") == "uint8_nhwc" else {ONNX_FLOAT, ONNX_FLOAT16}
    if in_type not in wanted:
        raise _refuse(where, "input", io.get("input", "float_nchw"),
                      f"a {ONNX_TYPE_NAMES.get(in_type, in_type)} input")
    out_type = out.type.tensor_type.elem_type
    labels_out = io.get("output", "logits") == "labels"
    if labels_out != (out_type in (ONNX_UINT8, ONNX_INT32, ONNX_INT64)):
        raise _refuse(where, "output", io.get("output", "logits"),
                      f"a {ONNX_TYPE_NAMES.get(out_type, out_type)} output")
    want_in, want_out = _expected_shapes(meta, io)
    _check_dims(where, "input", want_in, dims(inp), _names(io, "input"))
    _check_dims(where, "output", want_out, dims(out), _names(io, "output"), labels_out=labels_out)
    ops = {n.op_type for n in graph.node}
    quantised = bool(ops & QDQ_OPS)
    precision = io.get("precision", "fp32")
    if (precision == "int8") != quantised:
        raise _refuse(where, "precision", precision,
                      "Q/DQ (int8) nodes" if quantised else "no Q/DQ nodes (not an int8 graph)")
    float_inits = [t.data_type for t in graph.initializer if t.data_type in (ONNX_FLOAT, ONNX_FLOAT16)]
    fp16 = sum(1 for t in float_inits if t == ONNX_FLOAT16)
    if precision == "fp16" and not fp16:
        raise _refuse(where, "precision", "fp16", "no float16 tensors (an fp32 graph)")
    if precision == "fp32" and float_inits and fp16 * 2 > len(float_inits):
        raise _refuse(where, "precision", "fp32", "mostly float16 weights (an fp16 graph)")


def check_openvino(where: str, model, meta, io: dict[str, Any]) -> None:
    """An OpenVINO ``ov.Model`` against its ``metadata.json``: dtypes, static dims, FakeQuantize."""
    if len(model.inputs) != 1 or not model.outputs:
        raise CitysegError(f"{where}: a cityseg IR has one input and a first output; this one has "
                           f"{len(model.inputs)} inputs — re-export it")

    def dims(port) -> list[int | None]:
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic:
            return []
        return [d.get_length() if d.is_static else None for d in shape]

    in_type = model.inputs[0].get_element_type().get_type_name()
    want_u8 = io.get("input") == "uint8_nhwc"
    if want_u8 != (in_type == "u8") or (not want_u8 and in_type not in ("f32", "f16", "bf16")):
        raise _refuse(where, "input", io.get("input", "float_nchw"), f"a {in_type} input")
    out_type = model.outputs[0].get_element_type().get_type_name()
    labels_out = io.get("output", "logits") == "labels"
    if labels_out != (out_type in ("u8", "i32", "i64")):
        raise _refuse(where, "output", io.get("output", "logits"), f"a {out_type} output")
    want_in, want_out = _expected_shapes(meta, io)
    got_in, got_out = dims(model.inputs[0]), dims(model.outputs[0])
    if got_in:
        _check_dims(where, "input", want_in, got_in, _names(io, "input"))
    if got_out:
        _check_dims(where, "output", want_out, got_out, _names(io, "output"), labels_out=labels_out)
    quantised = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    precision = io.get("precision", "fp32")
    if (precision == "int8") != quantised:
        raise _refuse(where, "precision", precision,
                      "FakeQuantize (int8) operations" if quantised else "no FakeQuantize (not an int8 IR)")


def check_output(where: str, meta, io: dict[str, Any], shape: Sequence[int], dtype: str) -> None:
    """A graph we can only run (AOTInductor): the output of one probe run against the metadata."""
    labels_out = io.get("output", "logits") == "labels"
    _, want_out = _expected_shapes(meta, dict(io, dynamic=False))
    _check_dims(where, "output", want_out, list(shape), _names(io, "output"), labels_out=labels_out)
    precision = io.get("precision", "fp32")
    if not labels_out and precision in ("fp16", "bf16") and dtype == "torch.float32":
        return  # half-precision packages may return float32 logits
    if not labels_out and precision == "fp32" and dtype != "torch.float32":
        raise _refuse(where, "precision", "fp32", f"{dtype} logits")


def aoti_input_dims(path) -> list[int | None] | None:
    """The input shape an AOTInductor package was compiled for, read from its generated wrapper
    source (``assert_size_stride(arg.., {1L, 3L, 64L, 128L}, ..., "input")``); None if not found.

    Why read the source: the package runs an input of another shape without complaint (its own
    checks are off unless ``AOTI_RUNTIME_CHECK_INPUTS`` is set when it is first called) and
    returns garbage, so a wrong ``size`` in the sidecar must be caught before the first call.
    """
    import re
    import zipfile

    pattern = re.compile(r'assert_size_stride\(\w+, \{([^}]*)\}, \{[^}]*\}, "input"\)')
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if name.endswith(".wrapper.cpp"):
                    m = pattern.search(zf.read(name).decode("utf-8", "replace"))
                    if m:
                        return [int(v.strip().rstrip("L")) if v.strip().rstrip("L").isdigit() else None
                                for v in m.group(1).split(",")]
    except (OSError, zipfile.BadZipFile, KeyError):
        return None
    return None


def check_aoti_input(path, where: str, meta, io: dict[str, Any]) -> None:
    """The package's compiled input shape against the sidecar's batch and size."""
    dims = aoti_input_dims(path)
    if dims is None:
        return
    want_in, _ = _expected_shapes(meta, io)
    _check_dims(where, "input", want_in, dims, _names(io, "input"))
