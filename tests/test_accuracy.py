"""Accuracy debugging: ``check --layerwise``, ``export --max-drop``, ``--calibration``.

Fast tests check the per-layer figures against a hand-computed case (a graph whose candidate
differs by a known weight scale), the float island, the calibration methods against
onnxruntime's own calibrators and the CLI's refusals.  The slow tests train a small U-Net for a
few epochs, make one layer hostile to int8 on purpose (one output channel scaled by 1000 and its
consumer's weights divided by 1000: the same function in fp32, an activation outlier that sets
the per-tensor int8 scale so every other channel rounds to zero) and check that plain int8 loses
more than P points, that ``--layerwise`` ranks that layer first, that ``--max-drop P`` brings the
drop under P with that layer (and few others) in float in a graph TensorRT's parser takes, and
that the drop the export reports is the one ``cityseg check`` measures.
"""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from cityseg_deploy.artifacts import ONNX_META_KEY, pack, read_artifact_meta
from cityseg_deploy.cli import run
from cityseg_deploy.evaluation.layerwise import layerwise, val_inputs
from cityseg_deploy.export.accuracy_control import float_island
from cityseg_deploy.models.checkpoint import ModelMeta

from support import FeedReader

SIZE = (64, 128)
EPS = 0.05


class _Res:
    def __init__(self, code: int, output: str):
        self.exit_code, self.output = code, output


def cli(args, capsys) -> _Res:
    """``cityseg ARGS`` in-process (exit status as the console script returns it) + its output."""
    capsys.readouterr()
    code = run([str(a) for a in args])
    out = capsys.readouterr()
    return _Res(code, out.out + out.err)


def _tiny_graph(path, *, scale2: float = 1.0) -> None:
    """images → conv1 (3→4, 3x3) → relu → conv2 (4→10, 1x1) → logits, with cityseg metadata."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((10, 4, 1, 1)) * 0.5 * scale2).astype(np.float32)
    nodes = [helper.make_node("Conv", ["images", "w1"], ["t1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["t1"], ["t2"], name="relu1"),
             helper.make_node("Conv", ["t2", "w2"], ["logits"], name="conv2")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10, *SIZE])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    meta = ModelMeta.for_arch("unet_small", input_size=SIZE)
    io = {"input": "float_nchw", "output": "logits", "precision": "fp32", "dynamic": False,
          "batch": 1, "size": list(SIZE)}
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_META_KEY, pack(meta, io)
    onnx.save(model, str(path))


def test_layerwise_matches_hand_computed_figures(tmp_path, synth_root):
    base, cand = tmp_path / "base.onnx", tmp_path / "cand.onnx"
    _tiny_graph(base)
    _tiny_graph(cand, scale2=1.0 + EPS)  # conv2's output is exactly (1+EPS) x the base's
    report = layerwise(base, cand, synth_root, images=2, progress=False)
    rows = {r["name"]: r for r in report.layers}
    assert set(rows) == {"conv1", "relu1", "conv2"}
    # conv1, relu1: identical
    assert rows["conv1"]["sqnr_db"] == math.inf and rows["conv1"]["cosine"] == pytest.approx(1.0)
    # conv2: c = (1+eps) r  →  rel L2 = eps, SQNR = -20 log10(eps), cosine 1, all introduced here
    c2 = rows["conv2"]
    assert c2["rel_l2"] == pytest.approx(EPS, rel=1e-4)
    assert c2["sqnr_db"] == pytest.approx(-20 * math.log10(EPS), rel=1e-4)
    assert c2["channel_sqnr_db"] == pytest.approx(-20 * math.log10(EPS), rel=1e-4)
    assert c2["cosine"] == pytest.approx(1.0, abs=1e-9)
    assert c2["inherited_db"] == math.inf
    assert c2["introduced_db"] == pytest.approx(-20 * math.log10(EPS), rel=1e-4)
    assert report.ranked()[0]["name"] == "conv2"
    doc = report.to_dict()
    assert doc["ranking"][0] == "conv2" and doc["layers"][-1]["sqnr_db"] is None  # ∞ → null in JSON
    json.dumps(doc)


def test_layerwise_cli_writes_table_json_plot(tmp_path, synth_root, capsys):
    base, cand = tmp_path / "base.onnx", tmp_path / "cand.onnx"
    _tiny_graph(base)
    _tiny_graph(cand, scale2=1.0 + EPS)
    res = cli(["check", str(base), str(cand), "--data", str(synth_root), "--layerwise",
                                   "--layerwise-images", "1", "--out", str(tmp_path / "lw"),
                                   "--json", str(tmp_path / "lw.json"), "--no-progress"], capsys)
    assert res.exit_code == 0, res.output
    assert "| 1 | conv2 | Conv |" in res.output
    for suffix in ("json", "md", "png"):
        assert (tmp_path / "lw" / f"layerwise.{suffix}").stat().st_size > 0
    assert json.loads((tmp_path / "lw.json").read_text())["layerwise"][0]["ranking"][0] == "conv2"


def test_layerwise_refuses_a_checkpoint_baseline(tmp_path, synth_root, capsys):
    cand = tmp_path / "cand.onnx"
    _tiny_graph(cand)
    (tmp_path / "m.pt").write_bytes(b"")
    res = cli(["check", str(tmp_path / "m.pt"), str(cand), "--data", str(synth_root),
                                   "--layerwise"], capsys)
    assert res.exit_code == 2 and "error:" in res.output and "Traceback" not in res.output


def test_val_inputs_normalise_like_the_export(synth_root):
    meta = ModelMeta.for_arch("unet_small", input_size=SIZE)
    io = {"input": "float_nchw", "size": list(SIZE), "batch": 1}
    xs, where = val_inputs(meta, io, synth_root, "val", 2)
    assert len(xs) == 2 and xs[0].shape == (1, 3, *SIZE) and "val" in where
    from cityseg_deploy.data.cityscapes import CityscapesDataset

    image = CityscapesDataset(synth_root, "val", label_set=meta.label_set, size=SIZE)[0][0]
    ref = (image.astype(np.float32) / 255.0 - np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)
    np.testing.assert_allclose(xs[0][0], ref.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)


def test_float_island_reaches_the_consumer(tmp_path):
    path = tmp_path / "g.onnx"
    _tiny_graph(path)
    model = onnx.load(str(path))
    assert float_island(model, "conv1") == ["conv1", "relu1", "conv2"]  # through the ReLU, up to conv2
    assert float_island(model, "conv2") == ["conv2"]


# -- calibration methods ----------------------------------------------------------------------
def _outlier_graph(path) -> None:
    """x → Relu → Conv: the Relu output's range is what calibration decides."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 4, 1, 1)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def _images(n=4):
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        x = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
        x[0, 0, 0, 0] = 60.0  # one rare outlier per image
        out.append(x)
    return out


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_calibration_methods_match_onnxruntime(tmp_path, method):
    """Our bounded, batch-by-batch calibration gives onnxruntime's own ranges for each method."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, load_tensors_data

    from cityseg_deploy.export.quantize import calibrate_ranges

    model = tmp_path / "g.onnx"
    _outlier_graph(model)
    cache = tmp_path / "ours.json"
    calibrate_ranges(model, FeedReader(_images()), cache, tmp_path, method)
    ours = {k: v.range_value for k, v in load_tensors_data(cache).data.items()}
    ort_method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[method]
    extra = {} if method == "minmax" else {"symmetric": True}
    cal = create_calibrator(str(model), None, str(tmp_path / "aug.onnx"), calibrate_method=ort_method,
                            extra_options=extra)
    cal.collect_data(FeedReader(_images()))
    theirs = {k: v.range_value for k, v in cal.compute_data().data.items()}
    assert set(ours) == set(theirs)
    for name in ours:
        np.testing.assert_allclose(np.ravel(ours[name]), np.ravel(theirs[name]), rtol=0.05, atol=1e-3)
    if method == "percentile":  # clips the rare outlier that min-max keeps
        assert float(np.ravel(ours["r"])[1]) < 60.0


def test_calibration_option_errors(tmp_path, capsys):
    res = cli(["export", str(tmp_path / "nope.pt"), "-p", "fp16", "--calibration", "entropy"], capsys)
    assert res.exit_code == 2 and "error: --calibration applies to --precision int8 only" in res.output
    res = cli(["export", str(tmp_path / "nope.pt"), "-p", "fp16", "--max-drop", "1"], capsys)
    assert res.exit_code == 2 and "--max-drop applies to --precision int8" in res.output
    res = cli(["export", str(tmp_path / "nope.pt"), "-p", "int8", "--max-drop", "1",
                                   "--keep-fp32", "auto"], capsys)
    assert res.exit_code == 2 and "drop --keep-fp32" in res.output
    res = cli(["export", str(tmp_path / "nope.pt"), "-p", "int8", "--strict"], capsys)
    assert res.exit_code == 2 and "--strict applies with --max-drop only" in res.output


# -- the hostile model (slow) -----------------------------------------------------------------
P = 0.3  # mIoU points; plain int8 of the hostile model loses ~0.6 on the 4 synthetic val images
HOSTILE_WEIGHT = "model.down1.maxpool_conv.1.double_conv.0.weight"


def make_hostile(model, scale: float = 1000.0, channel: int = 0):
    """Scale one output channel of U-Net's down1 first conv (through its BN) by ``scale`` and
    divide the next conv's weights for it by ``scale``: the same function in fp32 (ReLU is
    positively homogeneous), an activation outlier for per-tensor int8."""
    dc = model.down1.maxpool_conv[1].double_conv
    with torch.no_grad():
        dc[1].weight[channel] *= scale
        dc[1].bias[channel] *= scale
        dc[3].weight[:, channel] /= scale
    return model


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, synth_root):
    """A briefly trained unet_small (so mIoU means something), made hostile; with its fp32 ONNX."""
    from cityseg_deploy.export import export
    from cityseg_deploy.models.checkpoint import load_checkpoint, save_checkpoint
    from cityseg_deploy.training.loop import fit

    folder = tmp_path_factory.mktemp("hostile")
    recipe = {"model": "unet_small", "label_set": "cityscapes10", "epochs": 8, "batch_size": 2,
              "optimizer": "adam", "lr": 3e-3, "loss": "ce", "train_size": list(SIZE),
              "val_size": list(SIZE), "augment": {"hflip": 0.0}, "seed": 0, "workers": 0, "amp": "off"}
    fit(recipe, synth_root, folder / "run", device="cpu", progress=False, log=None)
    model, meta = load_checkpoint(folder / "run" / "best.pt")
    ckpt = folder / "hostile.pt"
    save_checkpoint(ckpt, make_hostile(model.eval()), meta)
    fp32 = export(ckpt, format="onnx", out=folder / "hostile.onnx", log=None).path
    plain = export(ckpt, format="onnx", precision="int8", calib_data=synth_root, verify=False,
                   out=folder / "plain_int8.onnx", log=None).path
    return {"ckpt": ckpt, "fp32": fp32, "plain": plain, "folder": folder}


def _check_drop(ckpt, artifact, root) -> float:
    from cityseg_deploy.evaluation.check import check

    report = check(ckpt, [artifact], root, progress=False)
    return -100.0 * report["candidates"][0]["delta"]["miou"]


@pytest.mark.slow
def test_hostile_plain_int8_loses_more_than_p_and_layerwise_finds_the_layer(hostile, synth_root):
    assert _check_drop(hostile["ckpt"], hostile["plain"], synth_root) > P
    report = layerwise(hostile["fp32"], hostile["plain"], synth_root, images=4, progress=False)
    first = report.ranked()[0]
    assert first["module"] == HOSTILE_WEIGHT, [(r["name"], r["module"]) for r in report.ranked()[:5]]
    assert first["channel_sqnr_db"] < 3.0  # every channel but the outlier rounded away


@pytest.mark.slow
def test_max_drop_brings_the_drop_under_p(hostile, synth_root, capsys):
    from cityseg_deploy.export.trt_ops import check_graph

    out = hostile["folder"] / "controlled_int8.onnx"
    res = cli(["export", str(hostile["ckpt"]), "-p", "int8", "--calib-data", str(synth_root),
                                   "--max-drop", str(P), "--out", str(out), "--strict"], capsys)
    assert res.exit_code == 0, res.output
    record = read_artifact_meta(out)[1]["accuracy_control"]
    assert record["within"] and record["drop"] <= P
    assert 1 <= len(record["kept_float"]) <= 3
    fp32_names = {n.name: n for n in onnx.load(str(hostile["fp32"])).graph.node}
    assert HOSTILE_WEIGHT in fp32_names[record["kept_float"][0]].input  # the hostile layer first
    assert check_graph(onnx.load(str(out))) == []  # still a graph TensorRT's parser takes
    # the drop the export reports is what `cityseg check` measures independently
    res = cli(["check", str(hostile["ckpt"]), str(out), "--data", str(synth_root),
                                   "--json", str(out.with_suffix(".json")), "--no-progress"], capsys)
    assert res.exit_code == 0, res.output
    cand = json.loads(out.with_suffix(".json").read_text())["candidates"][0]
    assert -100.0 * cand["delta"]["miou"] == pytest.approx(record["drop"], abs=1e-9)
    assert "kept in float" in res.output and record["kept_float"][0] in res.output


@pytest.mark.slow
def test_max_drop_strict_exits_2_when_unreachable(hostile, synth_root, capsys):
    out = hostile["folder"] / "strict_int8.onnx"
    res = cli(["export", str(hostile["ckpt"]), "-p", "int8", "--calib-data", str(synth_root),
                                   "--max-drop", "0", "--max-trials", "1", "--out", str(out), "--strict"], capsys)
    # one trial (plain int8) cannot meet a zero bound on this model
    assert res.exit_code == 2 and "error: --max-drop 0 --strict" in res.output, res.output
    assert "Traceback" not in res.output


class _FakeTrials:
    """Stands in for exports: the drop falls as more of the ranked layers stay float."""

    def __init__(self, drops):
        self.drops, self.results = drops, []

    def run(self, kept, excluded):
        trial = {"trial": len(self.results), "kept_float": kept, "excluded_nodes": excluded,
                 "drop": self.drops[len(kept)]}
        self.results.append(trial)
        return trial


@pytest.mark.parametrize("needed", [1, 3, 5, 8])
def test_search_finds_the_fewest_float_layers(tmp_path, needed):
    from cityseg_deploy.export.accuracy_control import _search

    ranked = [f"layer{i}" for i in range(8)]
    drops = [5.0 if k < needed else 0.2 for k in range(9)]
    trials = _FakeTrials(drops)
    trials.run([], [])
    model = onnx.ModelProto()  # names not in a graph: each island is the layer alone
    _search(trials, ranked, model, max_drop=0.5, max_trials=12)
    within = [r for r in trials.results if r["drop"] <= 0.5]
    assert min(len(r["kept_float"]) for r in within) == needed
    assert len(trials.results) <= 1 + 2 * math.ceil(math.log2(8)) + 1  # doubling + bisection


def test_search_stops_at_max_trials():
    from cityseg_deploy.export.accuracy_control import _search

    trials = _FakeTrials([5.0] * 9)
    trials.run([], [])
    _search(trials, [f"l{i}" for i in range(8)], onnx.ModelProto(), max_drop=0.5, max_trials=3)
    assert len(trials.results) == 3


@pytest.mark.slow
@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_export_with_calibration_method(tmp_path, synth_root, method, capsys):
    from cityseg_deploy.models.checkpoint import save_checkpoint
    from cityseg_deploy.models.registry import build_model

    torch.manual_seed(0)
    meta = ModelMeta.for_arch("unet_small", input_size=SIZE)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("unet_small", **meta.arch_args).eval(), meta)
    out = tmp_path / "m_int8.onnx"
    res = cli(["export", ckpt, "-p", "int8", "--calib-data", synth_root, "--calibration", method,
               "--out", out, "--no-verify"], capsys)
    assert res.exit_code == 0, res.output
    assert f"calibration {method}" in res.output.splitlines()[0]  # the export line says which
    assert read_artifact_meta(out)[1]["calib_method"].startswith(method)


@pytest.mark.slow
def test_openvino_max_drop_and_layerwise(hostile, synth_root, capsys):
    """The same exclusion list serves OpenVINO (int8 from the mixed Q/DQ graph); its layerwise
    view finds the same layer through the IR's tensor names."""
    out = hostile["folder"] / "controlled_int8_openvino_model"
    res = cli(["export", hostile["ckpt"], "-f", "openvino", "-p", "int8", "--calib-data", synth_root,
               "--max-drop", P, "--out", out], capsys)
    assert res.exit_code == 0, res.output
    record = read_artifact_meta(out)[1]["accuracy_control"]
    assert record["within"] and 1 <= len(record["kept_float"]) <= 3
    assert _check_drop(hostile["ckpt"], out, synth_root) == pytest.approx(record["drop"], abs=1e-9)
    plain = hostile["folder"] / "plain_int8_openvino_model"
    from cityseg_deploy.export import export

    export(hostile["ckpt"], format="openvino", precision="int8", calib_data=synth_root, verify=False,
           out=plain, log=None)
    report = layerwise(hostile["fp32"], plain, synth_root, images=4, progress=False)
    assert not report.unmatched or len(report.unmatched) < len(report.layers) // 4
    assert report.ranked()[0]["module"] == HOSTILE_WEIGHT


def test_layerwise_fp16_candidate(tmp_path, synth_root):
    """An fp16 graph (the project's conversion: casts at the edges) matches layer by layer and
    its error is fp16 rounding: every layer found, SQNR well above int8's."""
    from cityseg_deploy.export.fp16 import convert_to_fp16

    base, cand = tmp_path / "base.onnx", tmp_path / "cand_fp16.onnx"
    _tiny_graph(base)
    model = convert_to_fp16(onnx.load(str(base)))
    props = {p.key: p for p in model.metadata_props}
    meta, io = read_artifact_meta(base)
    props[ONNX_META_KEY].value = pack(meta, {**io, "precision": "fp16"})
    onnx.save(model, str(cand))
    report = layerwise(base, cand, synth_root, images=1, progress=False)
    assert not report.unmatched and {r["name"] for r in report.layers} == {"conv1", "relu1", "conv2"}
    assert all(50.0 < r["sqnr_db"] < 120.0 for r in report.layers), [r["sqnr_db"] for r in report.layers]
