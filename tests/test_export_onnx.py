"""ONNX export of the three small presets: fp32 / fp16 / int8 parity, metadata, options, cache.

Random-init checkpoints at 64x128 on the session's synthetic dataset.  Tolerances (measured on
these presets, see cityseg_deploy/export/verify.py): fp32 max abs logit error < 1e-3 relative to
the largest logit; fp16 argmax agreement >= 99 %; int8 >= 93 % here (random-init nets have
near-tied logits: measured 96.5-100 %; trained presets reach >= 99 %).
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from cityseg_deploy.artifacts import read_artifact_meta
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.export import default_output, export, get_format
from cityseg_deploy.export.trt_ops import check_graph
from support import random_checkpoint

SMALL = ("deeplabv3_small", "unet_small", "denseaspp_small")
SIZE = (64, 128)
INT8_MIN_AGREEMENT = 0.93


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export_onnx")
    return {arch: random_checkpoint(folder / f"{arch}.pt", arch, size=SIZE) for arch in SMALL}


@pytest.fixture(scope="module")
def exported(ckpts, synth_root):
    """{(arch, precision): ExportResult} — each export done once for the module."""
    cache = {}

    def get(arch, precision):
        if (arch, precision) not in cache:
            cache[arch, precision] = export(ckpts[arch], format="onnx", precision=precision,
                                            calib_data=synth_root, data=synth_root, log=None)
        return cache[arch, precision]

    return get


def ort_runner(path):
    """The graph in a plain onnxruntime CPU session, independent of the package's runners."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def reference(ckpt, x):
    from cityseg_deploy import load_model

    with torch.no_grad():
        return load_model(ckpt)(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("arch", SMALL)
def test_fp32_parity_and_metadata(arch, ckpts, exported):
    res = exported(arch, "fp32")
    assert res.path == ckpts[arch].with_suffix(".onnx") and res.path.is_file()
    assert res.checks["rel_err"] < 1e-3 and "miou" in res.checks
    model = onnx.load(str(res.path))
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["logits"]
    onnx.checker.check_model(model, full_check=True)
    meta, io = read_artifact_meta(res.path)
    assert meta.arch == arch and meta.input_size == list(SIZE)
    assert io["precision"] == "fp32" and io["input"] == "float_nchw" and io["output"] == "logits"
    assert io["size"] == list(SIZE) and io["batch"] == 1 and io["dynamic"] is False
    assert 17 <= io["opset"] <= 20 and len(io["source_sha256"]) == 64
    # own check, independent of verify.py: random input
    x = np.random.default_rng(0).standard_normal((1, 3, *SIZE)).astype(np.float32)
    ref, out = reference(ckpts[arch], x), ort_runner(res.path)(x)
    assert np.abs(out - ref).max() < 1e-3 * np.abs(ref).max()


@pytest.mark.parametrize("arch", SMALL)
def test_fp16_graph(arch, ckpts, exported):
    res = exported(arch, "fp16")
    assert res.path.name == f"{arch}_fp16.onnx"
    model = onnx.load(str(res.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_w = [i for i in model.graph.initializer if i.dims and len(i.dims) == 4]
    assert conv_w and all(i.data_type == onnx.TensorProto.FLOAT16 for i in conv_w)
    assert res.checks["agreement"] >= 0.99
    assert read_artifact_meta(res.path)[1]["precision"] == "fp16"
    assert res.size_mb < exported(arch, "fp32").size_mb * 0.6


@pytest.mark.parametrize("arch", SMALL)
def test_int8_qdq_graph(arch, ckpts, exported):
    res = exported(arch, "int8")
    model = onnx.load(str(res.path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert res.checks["agreement"] >= INT8_MIN_AGREEMENT
    cache = res.path.with_name(f"{arch}_int8.calib.json")
    assert cache.is_file() and json.loads(cache.read_text())["ranges"]
    assert read_artifact_meta(res.path)[1]["precision"] == "int8"


@pytest.mark.parametrize("arch", SMALL)
def test_tensorrt_op_check_passes(arch, exported):
    for precision in ("fp32", "fp16", "int8"):
        assert check_graph(exported(arch, precision).path) == [], (arch, precision)


def test_calibration_cache_reused(ckpts, synth_root, exported, capsys):
    first = exported("denseaspp_small", "int8")
    assert first.checks["calibration_cached"] is False
    again = export(ckpts["denseaspp_small"], format="onnx", precision="int8", calib_data=synth_root,
                   log=print, verify=False)
    assert again.path == first.path and again.checks["calibration_cached"] is True
    assert "cached ranges" in capsys.readouterr().out


@pytest.mark.slow
def test_calibration_cache_misses_on_other_images(ckpts, synth_root, exported):
    exported("denseaspp_small", "int8")
    other = export(ckpts["denseaspp_small"], format="onnx", precision="int8", calib_data=synth_root,
                   calib_images=2, log=None, verify=False)
    assert other.checks["calibration_cached"] is False


def test_keep_fp32_names(ckpts, synth_root, exported):
    ck = ckpts["denseaspp_small"]
    model = onnx.load(str(exported("denseaspp_small", "fp32").path))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    res = export(ck, format="onnx", precision="int8", out=ck.with_name("keep.onnx"), keep_fp32=convs[-1],
                 calib_data=synth_root, log=None)
    q = onnx.load(str(res.path))
    last = next(n for n in q.graph.node if n.name == convs[-1])
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    assert producers.get(last.input[1]) != "DequantizeLinear"  # its weight is not quantised
    with pytest.raises(CitysegError, match="no node of that name"):
        export(ck, format="onnx", precision="int8", out=ck.with_name("bad.onnx"), keep_fp32="nope",
               calib_data=synth_root, log=None)
    assert not ck.with_name("bad.onnx").exists()


@pytest.mark.slow
def test_keep_fp32_auto(ckpts, synth_root, exported):
    ck = ckpts["denseaspp_small"]
    model = onnx.load(str(exported("denseaspp_small", "fp32").path))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    auto = export(ck, format="onnx", precision="int8", out=ck.with_name("auto.onnx"), keep_fp32="auto",
                  calib_data=synth_root, log=None)
    assert set(auto.checks["keep_fp32"]) <= {convs[0], convs[-1]}
    assert "none" in auto.checks["keep_fp32_errors"]


def test_preprocess_argmax_graph(ckpts, synth_root):
    ck = ckpts["unet_small"]
    res = export(ck, format="onnx", out=ck.with_name("e2e.onnx"), preprocess=True, argmax=True,
                 data=synth_root, log=None)
    model = onnx.load(str(res.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in model.graph.output] == ["labels"]
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert res.checks["agreement"] >= 0.999
    _, io = read_artifact_meta(res.path)
    assert io["input"] == "uint8_nhwc" and io["output"] == "labels"
    assert check_graph(model) == []
    image = np.random.default_rng(1).integers(0, 256, (1, *SIZE, 3), dtype=np.uint8)
    labels = ort_runner(res.path)(image)
    assert labels.shape == (1, *SIZE) and labels.dtype == np.uint8


@pytest.mark.slow
def test_preprocess_argmax_fp16(ckpts, synth_root):
    ck = ckpts["unet_small"]
    fp16 = export(ck, format="onnx", precision="fp16", out=ck.with_name("e2e16.onnx"), preprocess=True,
                  argmax=True, data=synth_root, log=None)
    assert check_graph(fp16.path) == [] and fp16.checks["agreement"] >= 0.99


@pytest.mark.slow
def test_dynamic_shapes(ckpts):
    ck = ckpts["denseaspp_small"]
    res = export(ck, format="onnx", out=ck.with_name("dyn.onnx"), dynamic=True, batch=2, log=None)
    assert read_artifact_meta(res.path)[1]["dynamic"] is True
    run = ort_runner(res.path)
    for shape in ((1, 3, 64, 128), (3, 3, 96, 64)):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        out = run(x)
        assert out.shape == (shape[0], 19, *shape[2:])
        ref = reference(ck, x)
        assert np.abs(out - ref).max() < 1e-3 * np.abs(ref).max()


def test_random_images_note(ckpts, exported, capsys):
    ck = ckpts["denseaspp_small"]
    exported("denseaspp_small", "fp32")
    res = export(ck, format="onnx", out=ck.with_name("rnd.onnx"), log=print)
    assert "random images" in res.checks["images"] and "random images" in capsys.readouterr().out


def test_default_outputs(tmp_path):
    ck = tmp_path / "m.pt"
    assert default_output(ck, get_format("onnx"), "fp16").name == "m_fp16.onnx"
    assert default_output(ck, get_format("engine"), "int8").name == "m_int8.engine"
    assert default_output(ck, get_format("aoti"), "fp32").name == "m.pt2"
    assert default_output(ck, get_format("openvino"), "int8").name == "m_int8_openvino_model"


def test_failed_parity_leaves_no_file(ckpts, monkeypatch):
    from cityseg_deploy.export import verify

    monkeypatch.setitem(verify.TOLERANCES, "fp32", {"rel_err": -1.0})
    ck = ckpts["denseaspp_small"]
    with pytest.raises(CitysegError, match="differs from PyTorch"):
        export(ck, format="onnx", out=ck.with_name("bad32.onnx"), log=None)
    assert not ck.with_name("bad32.onnx").exists()
    assert not [p for p in ck.parent.iterdir() if p.name.startswith(".bad32")]
