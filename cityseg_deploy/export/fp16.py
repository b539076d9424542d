"""fp16 ONNX: half-precision weights and activations inside, fp32 (or uint8) at the edges.

TensorRT 10/11 build strongly typed networks, so the precision has to be written in the graph
(DESIGN.md).  Converted with plain ``onnx`` (onnxconverter-common is not a dependency):

1. float initializers and ``Constant``/``ConstantOfShape`` values → float16, ``Cast(to=FLOAT)`` →
   ``Cast(to=FLOAT16)`` (the in-graph preprocessing casts uint8 straight to fp16: 0..255 is exact);
2. a ``Cast`` to fp16 after each float graph input and a ``Cast`` back to fp32 before each float
   graph output, so callers keep feeding and reading fp32;
3. kept in fp32: the ``roi``/``scales`` inputs of ``Resize`` (the ONNX spec types ``scales`` as
   float only); everything else (BatchNormalization, ReduceMean over at most 64×128 values here,
   Resize data) is fine in fp16 — the check measures ≥ 99 % argmax agreement on every preset.
4. value_info is dropped and re-inferred, and the result must pass ``onnx.checker``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import atomic_path, path_mb
from ..system.timing import Timer
from .job import ExportJob
from .result import ExportResult

FLOAT, FLOAT16 = 1, 10
# (op_type, input index) pairs whose tensors stay fp32.
KEEP_FP32_INPUTS = {("Resize", 1), ("Resize", 2)}


def _half(tensor):
    from onnx import numpy_helper

    arr = numpy_helper.to_array(tensor)
    if np.abs(arr).max(initial=0) > 65504:
        arr = np.clip(arr, -65504, 65504)
    new = numpy_helper.from_array(arr.astype(np.float16), tensor.name)
    tensor.CopyFrom(new)


def _rename(graph, old: str, new: str, *, producers: bool) -> None:
    """Every node input named ``old`` (and with ``producers`` every node output) becomes ``new``."""
    for node in graph.node:
        for names in ((node.output, node.input) if producers else (node.input,)):
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new


def convert_to_fp16(model):
    """Return a new ModelProto: fp16 inside, the graph's inputs and outputs as they were."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    keep = {node.input[i] for node in graph.node for (op, i) in KEEP_FP32_INPUTS
            if node.op_type == op and len(node.input) > i and node.input[i]}
    for init in graph.initializer:
        if init.data_type == FLOAT and init.name not in keep:
            _half(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] not in keep:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT:
                    _half(attr.t)
                elif attr.name == "value_float":
                    value = attr.f
                    node.ClearField("attribute")
                    node.attribute.append(helper.make_attribute(
                        "value", helper.make_tensor("value", FLOAT16, [], [value])))
                    break
        elif node.op_type == "ConstantOfShape":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT:
                    _half(attr.t)
        elif node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == FLOAT:
                    attr.i = FLOAT16
    # fp32 edges: Cast in after float inputs, Cast out before float outputs.
    new_nodes = []
    for inp in graph.input:
        if inp.type.tensor_type.elem_type != FLOAT:
            continue
        half = inp.name + "_fp16"
        _rename(graph, inp.name, half, producers=False)
        new_nodes.append(helper.make_node("Cast", [inp.name], [half], to=FLOAT16, name=half + "_cast"))
    tail = []
    for out in graph.output:
        if out.type.tensor_type.elem_type != FLOAT:
            continue
        half = out.name + "_fp16"
        _rename(graph, out.name, half, producers=True)  # an output may also be read inside
        tail.append(helper.make_node("Cast", [half], [out.name], to=FLOAT, name=out.name + "_cast"))
    nodes = new_nodes + list(graph.node) + tail
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def export_fp16(job: ExportJob, out: Path) -> ExportResult:
    import onnx

    from . import verify
    from .graph import build_fp32_graph, check_model, set_metadata

    with Timer() as t, atomic_path(out) as tmp:
        fp32 = build_fp32_graph(job, tmp)
        model = convert_to_fp16(fp32)
        set_metadata(model, job, "fp16")
        onnx.save(model, str(tmp))
        check_model(tmp)
        checks = {}
        if job.verify:
            checks = verify.check(job, tmp, "onnx", "fp16", out.name)
    return ExportResult(out, "onnx", "fp16", t.seconds, path_mb(out), checks)
