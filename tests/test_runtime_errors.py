"""Bad inputs end as one ``error:`` line and exit status 2 (through the CLI) or a CitysegError."""
from __future__ import annotations

import json
import shutil

import pytest

from cityseg_deploy import runtime
from cityseg_deploy.cli import run
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.runtime.tensorrt_backend import check_engine_origin
from test_runtime_artifacts import arts, make_checkpoint  # noqa: F401


def _error(capsys, argv) -> str:
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_unknown_artifact_kind(tmp_path, synth_root, capsys):
    model = tmp_path / "model.txt"
    model.write_text("hello")
    assert "unknown artifact kind" in _error(capsys, ["eval", str(model), "--data", str(synth_root)])


def test_corrupt_onnx_and_checkpoint(tmp_path, synth_root, capsys):
    (tmp_path / "bad.onnx").write_bytes(b"\x00garbage" * 10)
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not a zip")
    assert "bad.onnx" in _error(capsys, ["eval", str(tmp_path / "bad.onnx"), "--data", str(synth_root)])
    assert "bad.pt" in _error(capsys, ["predict", str(tmp_path / "bad.pt"), "--data", str(synth_root),
                                       "--out", str(tmp_path / "o")])


def test_corrupt_openvino_ir(arts, tmp_path):
    ir = tmp_path / "x_openvino_model"
    shutil.copytree(arts["ov"], ir)
    next(ir.glob("*.xml")).write_text("<net><broken")
    with pytest.raises(CitysegError, match="OpenVINO"):
        runtime.load(ir)


def test_engine_needs_tensorrt_or_gpu(arts, tmp_path, synth_root, capsys):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not an engine")
    from cityseg_deploy.artifacts import default_io, read_artifact_meta, write_sidecar

    meta, _ = read_artifact_meta(arts["onnx"])
    write_sidecar(engine, meta, default_io(meta, tensorrt_version="10.3.0", gpu="NVIDIA A100"))
    line = _error(capsys, ["eval", str(engine), "--data", str(synth_root)])
    assert "TensorRT" in line or "GPU" in line


def test_engine_built_elsewhere_names_both_versions():
    io = {"tensorrt_version": "10.3.0", "gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
    with pytest.raises(CitysegError, match=r"TensorRT 10\.3\.0 \(this machine: 10\.7\.0\)"):
        check_engine_origin("m.engine", io, "10.7.0", "NVIDIA H100", "9.0")
    check_engine_origin("m.engine", io, "10.3.0", "NVIDIA A100-SXM4-80GB", "8.0")  # same: fine


def test_wrong_channel_count_image_via_api(arts):
    import numpy as np

    seg = runtime.load(arts["onnx"], threads=1)
    with pytest.raises(CitysegError, match="channel"):
        seg.predict(np.zeros((64, 128, 4), np.uint8))


def test_dataset_of_another_class_count(tmp_path, synth_root, capsys):
    unet10 = make_checkpoint(tmp_path / "unet10.pt", synth_root, arch="unet_small", steps=0)
    line = _error(capsys, ["eval", str(unet10), "--data", str(synth_root), "--label-set", "cityscapes19"])
    assert "10 classes" in line and "19" in line
    # a model of a foreign class set (e.g. COCO's 21) on Cityscapes data
    from cityseg_deploy.models import ModelMeta, build_model, save_checkpoint

    meta = ModelMeta.for_arch("unet_small", input_size=(64, 128))
    meta.label_set, meta.class_names = "coco21", [f"c{i}" for i in range(21)]
    meta.palette, meta.arch_args = [[0, 0, 0]] * 21, dict(meta.arch_args, num_classes=21)
    save_checkpoint(tmp_path / "coco.pt", build_model("unet_small", num_classes=21), meta)
    assert "21 classes" in _error(capsys, ["eval", str(tmp_path / "coco.pt"), "--data", str(synth_root)])


def test_eval_leaves_no_json_on_error(tmp_path, synth_root, capsys):
    out = tmp_path / "e.json"
    _error(capsys, ["eval", str(tmp_path / "none.onnx"), "--data", str(synth_root), "--json", str(out)])
    assert not out.exists()


def test_onnx_precision_other_than_the_graphs(arts, synth_root, capsys):
    """An ONNX graph runs at the precision written in it; asking for another says what to do."""
    line = _error(capsys, ["eval", f"{arts['onnx']}@int8", "--data", str(synth_root)])
    assert "this ONNX graph is fp32" in line and "re-export it with --precision int8" in line
    line = _error(capsys, ["eval", f"{arts['onnx']}@bf16", "--data", str(synth_root)])
    assert "CKPT@bf16" in line and "OpenVINO" in line
