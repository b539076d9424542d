"""TensorRT: the static operator check (always) and the engine build (GPU + TensorRT only)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from cityseg_deploy.errors import CitysegError
from cityseg_deploy.export.trt_ops import check_graph

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_GPU = torch.cuda.is_available()


def graph(nodes, inputs, outputs, inits=(), opset=18):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, t=TensorProto.FLOAT, shape=(1, 3, 8, 8)):
    return helper.make_tensor_value_info(name, t, list(shape))


def test_clean_graph_passes():
    m = graph([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x")], [vi("y")])
    assert check_graph(m) == []


@pytest.mark.parametrize("attrs, fragment", [
    ({"mode": "cubic"}, "mode 'cubic'"),
    ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"}, "coordinate_transformation_mode"),
    ({"mode": "linear", "antialias": 1}, "antialias"),
    ({"mode": "linear", "keep_aspect_ratio_policy": "not_larger"}, "keep_aspect_ratio_policy"),
])
def test_resize_restrictions(attrs, fragment):
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs", **attrs)
    issues = check_graph(graph([node], [vi("x")], [vi("y", shape=(1, 3, 16, 16))], [scales]))
    assert issues and fragment in str(issues[0])


def test_unsupported_op_uint8_inside_and_zero_point():
    nodes = [helper.make_node("Cast", ["x"], ["u"], to=TensorProto.UINT8, name="c"),
             helper.make_node("Cast", ["u"], ["f"], to=TensorProto.FLOAT, name="c2"),
             helper.make_node("QuantizeLinear", ["f", "s", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq"),
             helper.make_node("Det", ["dq"], ["y"], name="det")]
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(3, np.int8), "zp")]
    m = graph(nodes, [vi("x")], [vi("y", shape=(1, 3))], inits)
    text = "\n".join(map(str, check_graph(m)))
    assert "UINT8 tensor 'u' inside the network" in text
    assert "zero point must be 0" in text
    assert "det (Det): operator not supported" in text


def test_opset_range_and_pool_dilations():
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2], name="mp")
    m = graph([node], [vi("x")], [vi("y", shape=(1, 3, 6, 6))], opset=21)
    text = "\n".join(map(str, check_graph(m)))
    assert "opset 21" in text and "dilations" in text


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["deeplabv3_resnet50", "unet", "denseaspp161"])
def test_full_size_models_pass_the_check(arch, tmp_path):
    """Random init at 64x128: the full-size graphs export and pass the TensorRT op check."""
    from cityseg_deploy.export import export
    from cityseg_deploy.models.checkpoint import ModelMeta, save_checkpoint
    from cityseg_deploy.models.registry import build_model

    meta = ModelMeta.for_arch(arch, input_size=(64, 128))
    save_checkpoint(tmp_path / "m.pt", build_model(arch, **meta.arch_args).eval(), meta)
    res = export(tmp_path / "m.pt", format="onnx", log=None)
    assert res.checks["rel_err"] < 1e-3
    assert check_graph(res.path) == []


@pytest.mark.skipif(HAVE_TRT and HAVE_GPU, reason="TensorRT and a GPU are present")
def test_trt_export_says_what_is_missing(tmp_path):
    from cityseg_deploy.export.tensorrt import require_tensorrt

    with pytest.raises(CitysegError, match="TensorRT is not installed|needs a CUDA GPU"):
        require_tensorrt()


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason="TensorRT not installed")
@pytest.mark.skipif(not HAVE_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_trt_engine_build(precision, tmp_path, synth_root):
    from cityseg_deploy.artifacts import read_artifact_meta
    from cityseg_deploy.export import export
    from cityseg_deploy.models.checkpoint import ModelMeta, save_checkpoint
    from cityseg_deploy.models.registry import build_model

    meta = ModelMeta.for_arch("denseaspp_small", input_size=(64, 128))
    save_checkpoint(tmp_path / "m.pt", build_model("denseaspp_small", **meta.arch_args).eval(), meta)
    res = export(tmp_path / "m.pt", format="engine", precision=precision, dynamic=True,
                 calib_data=synth_root, data=synth_root, log=None)
    assert res.path.suffix == ".engine" and res.path.with_name(res.path.name + ".timing.cache").is_file()
    _, io = read_artifact_meta(res.path)
    assert io["precision"] == precision and "tensorrt_version" in io
