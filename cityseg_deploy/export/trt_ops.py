"""Static check: would TensorRT's ONNX parser take this graph?  (No TensorRT needed.)

The table is transcribed from onnx-tensorrt ``docs/operators.md`` (TensorRT 10.x; facts only):
supported operators with their supported tensor types, the documented restrictions that can be
read off a graph, and the data-type rules:

- opsets 9–20 (TensorRT 10.0; later 10.x parse up to 24 — 20 is the portable ceiling);
- INT8 (and FP8/INT4) are *quantized types*: only reached through Q/DQ from a float type
  (DequantizeLinear takes INT8; QuantizeLinear/DequantizeLinear zero points must be 0);
- UINT8 only as a network input or output tensor (Cast reads/writes it);
- DOUBLE is cast down to FLOAT (limited support: reported as a note, not a failure);
- Resize: modes ``nearest``/``linear``; coordinate transformation ``half_pixel``,
  ``pytorch_half_pixel``, ``tf_half_pixel_for_nn``, ``asymmetric``, ``align_corners``; nearest modes
  ``floor``/``ceil``/``round_prefer_floor``/``round_prefer_ceil``; ``keep_aspect_ratio_policy``
  ``stretch`` only; no antialiasing;
- AveragePool/MaxPool/LpPool: 2D or 3D, ``dilations`` empty or all ones, MaxPool without the
  ``Indices`` output; Reduce*: ``axes`` must be an initializer; Dropout: ``is_training`` an
  initializer evaluating to False; TopK ``sorted`` = 1; ScatterND ``reduction`` none;
  LayerNormalization only its first output.

``check_graph(model_or_path) -> list[Issue]`` (empty = passes); ``notes`` are kept apart.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import CitysegError

OPSET_MIN, OPSET_MAX = 9, 20

_F = ("FP32", "FP16", "BF16")
_FI = _F + ("INT32", "INT64")
_FIB = _FI + ("BOOL",)
_B = ("BOOL",)

# operator -> supported input types (TensorRT 10.x, onnx-tensorrt docs/operators.md)
SUPPORTED: dict[str, tuple[str, ...]] = {
    **{op: _F for op in (
        "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization",
        "Ceil", "Celu", "Clip", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "Dropout", "Einsum",
        "Elu", "Erf", "Exp", "Floor", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool",
        "GroupNormalization", "GRU", "HardSigmoid", "HardSwish", "Hardmax", "ImageScaler",
        "InstanceNormalization", "IsInf", "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "LRN",
        "LSTM", "LpNormalization", "LpPool", "MatMul", "MaxPool", "MeanVarianceNormalization",
        "ParametricSoftplus", "PRelu", "QuantizeLinear", "RandomNormal", "RandomNormalLike",
        "RandomUniform", "RandomUniformLike", "Reciprocal", "Resize", "RMSNormalization", "RNN",
        "RotaryEmbedding", "Round", "ScaledTanh", "Scan", "Selu", "Sigmoid", "Sin", "Sinh", "Softmax",
        "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Upsample")},
    **{op: ("FP32", "FP16") for op in (
        "BlackmanWindow", "DeformConv", "GridSample", "HammingWindow", "HannWindow", "Mish",
        "NonMaxSuppression", "NonZero", "RoiAlign")},
    **{op: _FI for op in (
        "Abs", "Add", "ArgMax", "ArgMin", "DepthToSpace", "Div", "Equal", "Greater", "GreaterOrEqual",
        "IsNaN", "Less", "LessOrEqual", "Max", "Min", "Mod", "Mul", "Neg", "Pad", "Pow", "Range",
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
        "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Scatter",
        "ScatterElements", "ScatterND", "Shrink", "Sign", "SpaceToDepth", "Sub", "Sum", "TopK")},
    **{op: _FIB for op in (
        "Concat", "Expand", "EyeLike", "Flatten", "Gather", "GatherElements", "GatherND", "Identity",
        "If", "Loop", "OneHot", "Reshape", "ReverseSequence", "Shape", "Size", "Slice", "Split",
        "Squeeze", "Tile", "Transpose", "Trilu", "Unsqueeze", "Where")},
    **{op: _B for op in ("And", "Not", "Or", "Xor")},
    "Cast": _FIB + ("UINT8",), "CastLike": _FIB + ("UINT8",),
    "Constant": _FIB + ("FP8", "FP4", "INT4"), "ConstantOfShape": _FIB + ("FP8", "FP4", "INT4"),
    "DequantizeLinear": ("INT8", "FP8", "FP4", "INT4"),
    "Gelu": _FI + ("INT8",), "Mean": _FI + ("FP8",), "Attention": _F + ("INT8", "FP8"),
    "STFT": ("FP32",), "TensorScatter": _F + ("INT32",),
}
UNSUPPORTED = {
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor",
    "Col2Im", "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det",
    "DynamicQuantizeLinear", "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool",
    "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement",
    "OptionalHasElement", "QLinearConv", "QLinearMatMul", "RegexFullMatch", "SequenceAt",
    "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength",
    "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat", "StringNormalizer",
    "StringSplit", "TfIdfVectorizer", "Unique",
}
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORDS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
# ONNX TensorProto element type -> the table's names
TYPE_NAMES = {1: "FP32", 2: "UINT8", 3: "INT8", 5: "INT16", 6: "INT32", 7: "INT64", 9: "BOOL",
              10: "FP16", 11: "DOUBLE", 16: "BF16", 17: "FP8", 18: "FP8", 19: "FP8", 20: "FP8",
              22: "INT4", 23: "FP4", 4: "UINT16", 12: "UINT32", 13: "UINT64", 8: "STRING"}


@dataclass(frozen=True)
class Issue:
    node: str
    op: str
    problem: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op}): {self.problem}"


def _attrs(node) -> dict:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


@dataclass(frozen=True)
class _Graph:
    """The graph as the node rules read it: nodes, tensor types, constants, network edges."""
    nodes: list  # NodeProto, in graph order
    types: dict[str, str]  # tensor name -> the table's type name ("?" when unknown)
    inits: dict  # tensor name -> TensorProto: initializers and Constant values
    consts: set[str]  # initializers and Constant outputs
    edges: set[str]  # network inputs and outputs


def check_graph(model, *, notes: list[str] | None = None) -> list[Issue]:
    """Issues that would stop TensorRT's ONNX parser (or change the graph's meaning)."""
    model = _load(model)
    notes = notes if notes is not None else []
    issues = _opset_issues(model)
    graph = _read_graph(model)
    for node in graph.nodes:
        issues += _node_issues(node, graph, notes)
    return issues


def _load(model):
    import onnx

    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise CitysegError(f"{path}: no such ONNX file")
        model = onnx.load(str(path))
    return model


def _opset_issues(model) -> list[Issue]:
    return [Issue("<model>", "opset", f"opset {imp.version} outside TensorRT 10's {OPSET_MIN}..{OPSET_MAX}")
            for imp in model.opset_import
            if imp.domain in ("", "ai.onnx") and not OPSET_MIN <= imp.version <= OPSET_MAX]


def _read_graph(model) -> _Graph:
    """Types from shape inference (else from what the file declares), constants, edges."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - types then come from what the file declares
        inferred = model
    g = inferred.graph
    types: dict[str, str] = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        types[vi.name] = TYPE_NAMES.get(vi.type.tensor_type.elem_type, "?")
    inits = {t.name: t for t in g.initializer}
    for t in g.initializer:
        types[t.name] = TYPE_NAMES.get(t.data_type, "?")
    consts = set(inits)
    for n in g.node:
        if n.op_type == "Constant":
            consts.update(n.output)
            for a in n.attribute:
                if a.name == "value":
                    inits[n.output[0]] = a.t
                    types[n.output[0]] = TYPE_NAMES.get(a.t.data_type, "?")
    edges = {v.name for v in g.input} | {v.name for v in g.output}
    return _Graph(list(g.node), types, inits, consts, edges)


def _node_issues(n, graph: _Graph, notes: list[str]) -> list[Issue]:
    """One node: its domain and operator, its tensor types, then the operator's own rules."""
    name, op, at = n.name or (n.output[0] if n.output else "?"), n.op_type, _attrs(n)
    if n.domain not in ("", "ai.onnx"):
        return [Issue(name, op, f"custom domain {n.domain!r}: needs a TensorRT plugin")]
    if op in UNSUPPORTED or op not in SUPPORTED:
        return [Issue(name, op, "operator not supported by the TensorRT ONNX parser")]
    problems = _uint8_inside(n, graph) + _input_types(n, name, graph, notes)
    for rule in _OP_RULES:
        problems += rule(n, at, graph)
    return [Issue(name, op, problem) for problem in problems]


def _uint8_inside(n, graph: _Graph) -> list[str]:
    return [f"UINT8 tensor {t!r} inside the network (TensorRT takes UINT8 only as a network input/output)"
            for t in list(n.input) + list(n.output)
            if t and graph.types.get(t) == "UINT8" and t not in graph.edges]


def _input_types(n, name: str, graph: _Graph, notes: list[str]) -> list[str]:
    """The data input's type against the table (DOUBLE is a note: TensorRT casts it down)."""
    op = n.op_type
    if op in ("Cast", "CastLike", "Constant", "ConstantOfShape", "Shape", "Size"):
        return []
    problems = []
    for t in [t for t in n.input[:1] if t]:
        ty = graph.types.get(t)
        if ty in (None, "?"):
            continue
        if ty == "DOUBLE":
            notes.append(f"{name} ({op}): DOUBLE input, TensorRT casts it down to FP32")
        elif ty == "UINT8" and t in graph.edges:
            problems.append(f"reads the UINT8 network input {t!r} directly; Cast it first (only Cast takes UINT8)")
        elif ty not in SUPPORTED[op]:
            problems.append(f"input type {ty} not supported (supported: {', '.join(SUPPORTED[op])})")
    return problems


def _resize(n, at: dict, graph: _Graph) -> list[str]:
    if n.op_type != "Resize":
        return []
    problems = []
    if at.get("mode", "nearest") not in RESIZE_MODES:
        problems.append(f"mode {at.get('mode')!r} (supported: nearest, linear)")
    if at.get("coordinate_transformation_mode", "half_pixel") not in RESIZE_COORDS:
        problems.append(f"coordinate_transformation_mode {at.get('coordinate_transformation_mode')!r} "
                        "not supported")
    if at.get("mode", "nearest") == "nearest" and at.get("nearest_mode", "round_prefer_floor") not in RESIZE_NEAREST:
        problems.append(f"nearest_mode {at.get('nearest_mode')!r} not supported")
    if at.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        problems.append("keep_aspect_ratio_policy other than 'stretch'")
    if at.get("antialias", 0):
        problems.append("antialiasing is not supported")
    return problems


def _pool(n, at: dict, graph: _Graph) -> list[str]:
    if n.op_type not in ("AveragePool", "MaxPool", "LpPool"):
        return []
    problems = []
    if any(d != 1 for d in at.get("dilations", [])):
        problems.append("dilations must be empty or all ones")
    if len(at.get("kernel_shape", [0, 0])) not in (2, 3):
        problems.append("only 2D or 3D pooling")
    if n.op_type == "MaxPool" and len(n.output) > 1 and n.output[1]:
        problems.append("the Indices output is not supported")
    return problems


def _reduce_axes(n, at: dict, graph: _Graph) -> list[str]:
    if n.op_type.startswith("Reduce") and len(n.input) > 1 and n.input[1] and n.input[1] not in graph.consts:
        return ["axes must be an initializer"]
    return []


def _zero_point(n, at: dict, graph: _Graph) -> list[str]:
    from onnx import numpy_helper

    if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) <= 2 or not n.input[2]:
        return []
    zp = graph.inits.get(n.input[2])
    if zp is None:
        return ["zero point must be a constant 0"]
    if numpy_helper.to_array(zp).any():
        return ["zero point must be 0 (use symmetric quantisation)"]
    return []


def _dropout(n, at: dict, graph: _Graph) -> list[str]:
    from onnx import numpy_helper

    if n.op_type == "Dropout" and len(n.input) > 2 and n.input[2]:
        flag = graph.inits.get(n.input[2])
        if flag is None or bool(numpy_helper.to_array(flag)):
            return ["is_training must be an initializer evaluating to False"]
    return []


def _single_attributes(n, at: dict, graph: _Graph) -> list[str]:
    """TopK ``sorted``, ScatterND ``reduction``, LayerNormalization's outputs."""
    op = n.op_type
    if op == "TopK" and at.get("sorted", 1) != 1:
        return ["sorted must be 1"]
    if op == "ScatterND" and at.get("reduction", "none") != "none":
        return ["reduction other than 'none' is not supported"]
    if op == "LayerNormalization" and len([o for o in n.output if o]) > 1:
        return ["only the first output Y is supported"]
    return []


# the operators' own restrictions, in the order their issues are listed
_OP_RULES = (_resize, _pool, _reduce_axes, _zero_point, _dropout, _single_attributes)


def assert_tensorrt_compatible(model, what: str = "graph") -> None:
    issues = check_graph(model)
    if issues:
        shown = "; ".join(map(str, issues[:5])) + (f"; ... {len(issues) - 5} more" if len(issues) > 5 else "")
        raise CitysegError(f"{what}: TensorRT's ONNX parser would reject it: {shown}")
