"""Reshape the int8 Q/DQ graph, in memory at load, into the form onnxruntime's CPU kernels fuse.

The exported int8 graph (export/quantize.py) is TensorRT's form: symmetric int8 activations, each
ReLU between a Dequantize and a Quantize.  On x86, onnxruntime runs integer convolutions only on
uint8 activations, and turns a signed Quantize→Dequantize pair into uint8 itself only when the
pair has one consumer, so convolutions after a shared tensor (a residual block's input) ran in
float.  Two rewrites, for onnxruntime only (the file on disk stays as exported):

1. :func:`fold_relu_into_quantize` — ``Q_a → DQ_a → Relu → Q_b`` (or ``X → Relu → Q_b``) becomes
   ``X → Q_b`` with Q_b uint8 at zero point 0, whose clamp of negatives *is* the ReLU; one
   rounding instead of two (not bit-identical to the file, closer to fp32).
2. :func:`int8_activations_to_uint8` — every other activation pair gets zero point ``zp + 128``
   in uint8 (``q_u8 = q_s8 + 128`` exactly), as onnxruntime does to single-consumer pairs.

uint8 activations times 7-bit weights cannot saturate ``vpmaddubsw``'s int16 pair sums
(2 · 255 · 64 = 32640 < 32767).  What it changed, measured: bench/results/int8_design_notes.md.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np


class _Graph:
    """Producer/consumer index over an ``onnx.GraphProto`` (rebuilt by each rewrite)."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.outputs = {o.name for o in graph.output}
        self._to_array = numpy_helper.to_array

    def const(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else self._to_array(t)

    def only_consumer(self, name: str, op_type: str):
        nodes = self.consumers.get(name, [])
        if len(nodes) == 1 and nodes[0].op_type == op_type and name not in self.outputs:
            return nodes[0]
        return None

    def int8_activation_quantize(self, node) -> bool:
        """A QuantizeLinear with an int8 zero point whose every reader is a DequantizeLinear."""
        if node.op_type != "QuantizeLinear" or len(node.input) < 3:
            return False
        zp = self.const(node.input[2])
        readers = self.consumers.get(node.output[0], [])
        return (zp is not None and zp.dtype == np.int8 and zp.size == 1 and bool(readers)
                and node.output[0] not in self.outputs
                and all(r.op_type == "DequantizeLinear" for r in readers))

    def set_zero_point(self, node, value: np.ndarray) -> None:
        from onnx import numpy_helper

        name = f"{node.output[0]}_zero_point_u8"  # tensor names are unique; node names need not be
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        node.input[2] = name


def fold_relu_into_quantize(model) -> int:
    """Rewrite 1 of the module doc, in place; returns the number of ReLUs removed."""
    g = _Graph(model.graph)
    removed: set[str] = set()  # by output tensor name: unique in a graph, unlike node names
    folded = 0
    for relu in list(model.graph.node):
        if relu.op_type != "Relu":
            continue
        q_b = g.only_consumer(relu.output[0], "QuantizeLinear")
        if q_b is None or not g.int8_activation_quantize(q_b) or g.const(q_b.input[2]).item() != 0:
            continue
        source = relu.input[0]
        dq_a = g.producer.get(source)
        if dq_a is not None and dq_a.op_type == "DequantizeLinear" and g.only_consumer(source, "Relu"):
            q_a = g.producer.get(dq_a.input[0])
            if q_a is not None and q_a.op_type == "QuantizeLinear" and g.only_consumer(
                    dq_a.input[0], "DequantizeLinear"):
                source = q_a.input[0]  # round once, straight onto Q_b's grid
                removed |= {dq_a.output[0], q_a.output[0]}
        q_b.input[0] = source
        zero = np.zeros(g.const(q_b.input[2]).shape, np.uint8)
        g.set_zero_point(q_b, zero)
        for dq in g.consumers[q_b.output[0]]:
            g.set_zero_point(dq, zero)
        removed.add(relu.output[0])
        folded += 1
    if removed:
        kept = [n for n in model.graph.node if n.output[0] not in removed]
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return folded


def int8_activations_to_uint8(model) -> int:
    """Rewrite 2 of the module doc, in place; returns the number of Quantize nodes changed."""
    g = _Graph(model.graph)
    changed = 0
    for q in list(model.graph.node):
        if not g.int8_activation_quantize(q):
            continue
        zp = (g.const(q.input[2]).astype(np.int16) + 128).astype(np.uint8)
        g.set_zero_point(q, zp)
        for dq in g.consumers[q.output[0]]:
            g.set_zero_point(dq, zp)
        changed += 1
    return changed


def prepare_qdq_for_onnxruntime(model) -> dict[str, int]:
    """Both rewrites, in order; returns what each changed (for ``Segmenter.describe``)."""
    relus = fold_relu_into_quantize(model)
    return {"relu_folded": relus, "uint8_activations": int8_activations_to_uint8(model)}


def onnxruntime_cpu_graph(path) -> tuple[Any, dict[str, int]]:
    """What to hand ``onnxruntime.InferenceSession`` on CPU: the rewritten graph's bytes, or the
    path itself when neither rewrite applies (fp32/fp16 graphs, or one already in this form)."""
    import onnx

    model = onnx.load(str(path))
    changes = prepare_qdq_for_onnxruntime(model)
    if not any(changes.values()):
        return str(path), {}
    return model.SerializeToString(), changes
