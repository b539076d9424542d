"""``export --format triton``: the repository checked with Triton's own schema and the model file.

Truth: ``tritonclient``'s ``model_config_pb2`` parses ``config.pbtxt`` (protobuf text format,
unknown fields refused); the declared inputs/outputs are compared with what ``onnx`` and
``openvino`` read from the copied files; the batched model runs in onnxruntime at batch 2.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient (the 'scale' extra) is not installed")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from cityseg_deploy.cli import run  # noqa: E402
from cityseg_deploy.errors import CitysegError  # noqa: E402
from cityseg_deploy.export.triton import export_triton, verify_model_dir  # noqa: E402
from test_runtime_artifacts import make_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def sources(tmp_path_factory, synth_root):
    from cityseg_deploy.export import export

    root = tmp_path_factory.mktemp("triton_src")
    ckpt = make_checkpoint(root / "net.pt", synth_root, steps=1)
    quiet = dict(log=lambda *_: None, verify=False)
    return {"ckpt": ckpt, "onnx": Path(export(ckpt, format="onnx", **quiet).path),
            "ov": Path(export(ckpt, format="openvino", **quiet).path)}


def _parse(folder: Path):
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _onnx_io(path: Path) -> list[tuple[str, int, list]]:
    import onnx

    g = onnx.load(str(path)).graph
    return [(v.name, v.type.tensor_type.elem_type,
             [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim])
            for v in list(g.input) + list(g.output)]


def test_checkpoint_becomes_a_batched_onnx_model(sources, tmp_path):
    from cityseg_deploy.models import read_meta

    folder = export_triton(sources["ckpt"], tmp_path / "repo", max_batch=4)
    assert folder == tmp_path / "repo" / "net" and (folder / "1" / "model.onnx").is_file()
    cfg = _parse(folder)
    assert cfg.name == "net" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 4
    assert cfg.HasField("dynamic_batching")
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_CPU, 1)]
    graph = _onnx_io(folder / "1" / "model.onnx")
    declared = [(t.name, model_config_pb2.DataType.Name(t.data_type), [-1] + list(t.dims))
                for t in list(cfg.input) + list(cfg.output)]
    assert [(n, d) for n, _, d in graph] == [(n, d) for n, _, d in declared]
    assert [t for _, t, _ in declared] == ["TYPE_FP32", "TYPE_FP32"] and [t for _, t, _ in graph] == [1, 1]
    meta = read_meta(sources["ckpt"])
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert json.loads(params["cityseg_classes"]) == list(meta.class_names)
    assert json.loads(params["cityseg_palette"]) == [list(c) for c in meta.palette]
    assert json.loads(params["cityseg_mean"]) == list(meta.mean)
    assert json.loads(params["cityseg_std"]) == list(meta.std)

    import onnxruntime as ort

    sess = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.zeros((2, 3, 64, 128), np.float32)
    assert sess.run(None, {cfg.input[0].name: x})[0].shape[:2] == (2, 19)  # the batch really is free
    assert verify_model_dir(folder)["max_batch_size"] == 4


def test_static_onnx_is_copied_with_max_batch_0(sources, tmp_path):
    folder = export_triton(sources["onnx"], tmp_path / "repo", device="cuda")
    cfg = _parse(folder)
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [1, 3, 64, 128] and list(cfg.output[0].dims) == [1, 19, 64, 128]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (folder / "1" / "model.onnx").read_bytes() == sources["onnx"].read_bytes()


def test_openvino_ir_uses_the_openvino_backend(sources, tmp_path):
    import openvino as ov

    folder = export_triton(sources["ov"], tmp_path / "repo", name="seg")
    cfg = _parse(folder)
    assert cfg.backend == "openvino" and cfg.platform == "" and cfg.name == "seg"
    assert (folder / "1" / "model.xml").is_file() and (folder / "1" / "model.bin").is_file()
    model = ov.Core().read_model(str(folder / "1" / "model.xml"))
    assert [p.get_any_name() for p in model.inputs] == [t.name for t in cfg.input]
    assert list(model.inputs[0].get_partial_shape().to_shape()) == list(cfg.input[0].dims)


def test_a_config_that_disagrees_with_the_model_is_refused(sources, tmp_path):
    folder = export_triton(sources["onnx"], tmp_path / "repo")
    cfg = folder / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("dims: [ 1, 3, 64, 128 ]", "dims: [ 1, 3, 32, 32 ]"))
    with pytest.raises(CitysegError, match="declared TYPE_FP32"):
        verify_model_dir(folder)
    cfg.write_text(cfg.read_text().replace("max_batch_size", "max_batch_sizes"))  # not in Triton's schema
    with pytest.raises(CitysegError, match="not a valid Triton model config"):
        verify_model_dir(folder)


def test_cli_writes_the_repository_and_refuses_without_out(sources, tmp_path, capsys):
    assert run(["export", str(sources["onnx"]), "--format", "triton", "--out", str(tmp_path / "r")]) == 0
    assert "export success: triton" in capsys.readouterr().out
    assert _parse(tmp_path / "r" / "net").platform == "onnxruntime_onnx"
    assert run(["export", str(sources["onnx"]), "--format", "triton"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--out REPO" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # nothing else left behind
