"""The onnxruntime-only reshaping of int8 Q/DQ graphs (graphs/ort_int8.py).

Independent truths: onnxruntime with every graph optimisation off (its reference
Quantize/Dequantize/Relu kernels) on the graph as exported; numpy for a hand-built Q→DQ→Relu→Q
chain; and onnxruntime's own optimised graph, whose node types say which convolutions run in
integer arithmetic.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cityseg_deploy import runtime
from cityseg_deploy.graphs.ort_int8 import (fold_relu_into_quantize, int8_activations_to_uint8,
                                             onnxruntime_cpu_graph)
from test_runtime_artifacts import SIZE, arts  # noqa: F401  (session fixture)


def session(model_or_path, *, optimize: bool, saved=None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if saved is not None:
        so.optimized_model_filepath = str(saved)
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def int8_input(arts):
    rng = np.random.default_rng(0)
    return rng.standard_normal((1, 3, *SIZE)).astype(np.float32)  # the graph is batch 1


def test_uint8_activations_are_exactly_the_int8_graph(arts, int8_input):
    """q_u8 = q_s8 + 128 with zero point + 128: bit-identical under the reference kernels."""
    model = onnx.load(str(arts["onnx_int8"]))
    before = run(session(model, optimize=False), int8_input)
    changed = int8_activations_to_uint8(model)
    assert changed > 10
    zps = [numpy_helper.to_array(t).dtype for t in model.graph.initializer if t.name.endswith("_zero_point_u8")]
    assert zps and all(dt == np.uint8 for dt in zps)
    after = run(session(model, optimize=False), int8_input)
    np.testing.assert_array_equal(before, after)


def _relu_chain(scale_a: np.float32, scale_b: np.float32) -> onnx.ModelProto:
    """x → Q_a → DQ_a → Relu → Q_b → DQ_b → y, symmetric int8 as the exporter writes it."""
    inits = [numpy_helper.from_array(np.float32(scale_a), "sa"), numpy_helper.from_array(np.int8(0), "za"),
             numpy_helper.from_array(np.float32(scale_b), "sb"), numpy_helper.from_array(np.int8(0), "zb")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sa", "za"], ["qa"], name="Qa"),
             helper.make_node("DequantizeLinear", ["qa", "sa", "za"], ["da"], name="DQa"),
             helper.make_node("Relu", ["da"], ["r"], name="Relu"),
             helper.make_node("QuantizeLinear", ["r", "sb", "zb"], ["qb"], name="Qb"),
             helper.make_node("DequantizeLinear", ["qb", "sb", "zb"], ["y"], name="DQb")]
    graph = helper.make_graph(nodes, "relu_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_relu_folding_rounds_once_onto_the_output_grid():
    sa, sb = np.float32(0.05), np.float32(0.03)
    x = np.linspace(-4.0, 6.0, 64, dtype=np.float32)
    model = _relu_chain(sa, sb)
    exported = run(session(model, optimize=False), x)
    assert fold_relu_into_quantize(model) == 1
    assert Counter(n.op_type for n in model.graph.node) == {"QuantizeLinear": 1, "DequantizeLinear": 1}
    folded = run(session(model, optimize=False), x)
    # numpy: uint8 at zero point 0 on Q_b's grid — negatives → 0 (the ReLU), one rounding, 255 cap
    truth = np.clip(np.rint(x / sb), 0, 255) * sb
    np.testing.assert_allclose(folded, truth, rtol=0, atol=1e-6)
    # the exported chain: same grid, but rounded twice and capped at 127 steps
    expected_export = np.clip(np.rint(np.maximum(np.clip(np.rint(x / sa), -128, 127) * sa, 0) / sb), -128, 127) * sb
    np.testing.assert_allclose(exported, expected_export, atol=1e-6)
    inside = x <= 127 * sb
    fp32 = np.maximum(x, 0)
    assert np.abs(folded - fp32)[inside].max() <= sb / 2 + 1e-6  # within half a step of the ReLU
    assert np.abs(folded - fp32)[inside].mean() <= np.abs(exported - fp32)[inside].mean()


def test_every_convolution_runs_in_integer(arts, tmp_path):
    """After the rewrite onnxruntime's optimised graph has no float Conv and no Relu left."""
    source, changes = onnxruntime_cpu_graph(arts["onnx_int8"])
    assert isinstance(source, bytes) and changes["relu_folded"] > 0 and changes["uint8_activations"] > 0
    session(onnx.load_from_string(source), optimize=True, saved=tmp_path / "opt.onnx")
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx"), load_external_data=False).graph.node)
    convs = sum(1 for n in onnx.load(str(arts["onnx_int8"])).graph.node if n.op_type == "Conv")
    assert ops["QLinearConv"] == convs, ops
    assert ops["Conv"] == 0 and ops["Relu"] == 0, ops


def test_fp32_graphs_are_loaded_from_the_file(arts):
    source, changes = onnxruntime_cpu_graph(arts["onnx"])
    assert source == str(arts["onnx"]) and changes == {}


def test_segmenter_rewrites_on_cpu_and_stays_close(arts, synth_root):
    from cityseg_deploy.data import CityscapesDataset

    ds = CityscapesDataset(synth_root, "val")
    images = [ds[i][0] for i in range(len(ds))]
    fast = runtime.load(arts["onnx_int8"], threads=1)
    plain = runtime.load(arts["onnx_int8"], threads=1, cpu_int8_rewrite=False)
    reference = runtime.load(arts["ckpt"], threads=1).predict_logits(images)
    assert fast.describe()["int8_rewrite"]["relu_folded"] > 0
    assert "int8_rewrite" not in plain.describe()
    err_fast = np.abs(fast.predict_logits(images) - reference).mean()
    err_plain = np.abs(plain.predict_logits(images) - reference).mean()
    assert err_fast <= 1.1 * err_plain, (err_fast, err_plain)  # no worse than the graph as exported
    agree = (fast.predict(images) == plain.predict(images)).mean()
    assert agree >= 0.95, agree


def test_export_in_onnxruntime_layout_runs_fast_in_plain_onnxruntime(arts, synth_root, tmp_path):
    """`--int8-layout onnxruntime` writes what the runner builds at load: plain onnxruntime on
    the file gives the runner's logits exactly, with every convolution integer; the TensorRT
    operator check refuses the form (uint8 inside the network), and accepts the default."""
    from cityseg_deploy.artifacts import read_artifact_meta
    from cityseg_deploy.export import export
    from cityseg_deploy.export.trt_ops import check_graph

    path = export(arts["ckpt"], format="onnx", precision="int8", calib_data=synth_root,
                  out=tmp_path / "ort.onnx", int8_layout="onnxruntime", verify=False, log=None).path
    assert read_artifact_meta(path)[1]["int8_layout"] == "onnxruntime"
    x = np.random.default_rng(1).standard_normal((1, 3, *SIZE)).astype(np.float32)
    plain = session(path, optimize=True, saved=tmp_path / "opt.onnx")
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx"), load_external_data=False).graph.node)
    assert ops["Conv"] == 0 and ops["Relu"] == 0 and ops["QLinearConv"] > 0, ops
    runner_graph, _ = onnxruntime_cpu_graph(arts["onnx_int8"])  # the default file, as the runner loads it
    np.testing.assert_array_equal(run(plain, x), run(session(onnx.load_from_string(runner_graph), optimize=True), x))
    assert any("UINT8" in issue.problem for issue in check_graph(str(path))), "TensorRT check must refuse it"
    assert check_graph(str(arts["onnx_int8"])) == []
