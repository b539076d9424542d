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


def test_checkpoint_becomes_a_batched_uint8_in_labels_out_model(sources, synth_root, tmp_path):
    from cityseg_deploy import runtime
    from cityseg_deploy.data import CityscapesDataset
    from cityseg_deploy.models import read_meta

    folder = export_triton(sources["ckpt"], tmp_path / "repo", max_batch=4, instances=3)
    assert folder == tmp_path / "repo" / "net" and (folder / "1" / "model.onnx").is_file()
    cfg = _parse(folder)
    assert cfg.name == "net" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 4
    assert cfg.HasField("dynamic_batching")
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_CPU, 3)]
    graph = _onnx_io(folder / "1" / "model.onnx")
    declared = [(t.name, model_config_pb2.DataType.Name(t.data_type), [-1] + list(t.dims))
                for t in list(cfg.input) + list(cfg.output)]
    assert [(n, d) for n, _, d in graph] == [(n, d) for n, _, d in declared]
    # the serving default: uint8 pixels in, uint8 labels out (not fp32 in, logits out)
    assert [(n, t) for n, t, _ in declared] == [("images", "TYPE_UINT8"), ("labels", "TYPE_UINT8")]
    (warm,) = cfg.model_warmup  # one zeros request at the model's size, so no client pays the first run
    assert warm.batch_size == 1 and list(warm.inputs["images"].dims) == [64, 128, 3]
    assert warm.inputs["images"].zero_data
    meta = read_meta(sources["ckpt"])
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert json.loads(params["cityseg_classes"]) == list(meta.class_names)
    assert json.loads(params["cityseg_palette"]) == [list(c) for c in meta.palette]
    assert json.loads(params["cityseg_mean"]) == list(meta.mean)
    assert json.loads(params["cityseg_std"]) == list(meta.std)

    import onnxruntime as ort

    sess = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    ds = CityscapesDataset(synth_root, "val")
    x = np.stack([ds[i][0] for i in range(2)])  # HxWx3 uint8 RGB, as a client sends
    labels = sess.run(None, {"images": x})[0].reshape(2, 64, 128)  # the batch really is free
    with runtime.load(sources["ckpt"]) as seg:
        truth = seg.predict(list(x))
    assert np.mean(labels == np.stack(truth)) > 0.999
    assert verify_model_dir(folder)["max_batch_size"] == 4


def test_logits_keeps_the_float_graph(sources, tmp_path):
    cfg = _parse(export_triton(sources["ckpt"], tmp_path / "repo", logits=True))
    assert [model_config_pb2.DataType.Name(t.data_type) for t in (*cfg.input, *cfg.output)] == ["TYPE_FP32"] * 2
    assert cfg.max_batch_size == 8 and list(cfg.model_warmup[0].inputs[cfg.input[0].name].dims) == [3, 64, 128]


def test_a_second_model_of_the_same_stem_is_refused_without_name(sources, tmp_path):
    first = export_triton(sources["onnx"], tmp_path / "repo")
    before = (first / "1" / "model.onnx").read_bytes()
    with pytest.raises(CitysegError, match="--name"):
        export_triton(sources["ckpt"], tmp_path / "repo")  # net.pt and net.onnx: one stem
    assert (first / "1" / "model.onnx").read_bytes() == before  # the first is untouched
    assert export_triton(sources["ckpt"], tmp_path / "repo", name="net_u8").name == "net_u8"
    assert export_triton(sources["onnx"], tmp_path / "repo", overwrite=True) == first


def test_batch_on_a_static_graph_is_refused_not_silently_0(sources, tmp_path):
    with pytest.raises(CitysegError, match="static batch-1"):
        export_triton(sources["onnx"], tmp_path / "repo", max_batch=8)
    assert not (tmp_path / "repo" / "net").exists()


def test_int8_for_cpu_instances_is_the_graph_cityseg_runs(sources, synth_root, tmp_path):
    """Triton's onnxruntime backend runs the file as it is: it must be cityseg's rewritten graph."""
    import onnx
    import onnxruntime as ort

    from cityseg_deploy import runtime
    from cityseg_deploy.data import CityscapesDataset
    from cityseg_deploy.export import export
    from cityseg_deploy.graphs.ort_int8 import prepare_qdq_for_onnxruntime

    int8 = Path(export(sources["ckpt"], format="onnx", precision="int8", calib_data=str(synth_root),
                       calib_images=4, preprocess=True, argmax=True, out=str(tmp_path / "q.onnx"),
                       log=lambda *_: None, verify=False).path)
    folder = export_triton(int8, tmp_path / "repo")
    written = onnx.load(str(folder / "1" / "model.onnx"))
    assert not any(prepare_qdq_for_onnxruntime(written).values())  # already in the rewritten form
    sess = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    ds = CityscapesDataset(synth_root, "val")
    with runtime.load(int8, threads=1) as seg:
        for i in range(len(ds)):
            image = ds[i][0]
            got = sess.run(None, {"images": image[None]})[0].reshape(image.shape[:2])
            np.testing.assert_array_equal(got, seg.predict(image))
    gpu = export_triton(int8, tmp_path / "repo", name="q_gpu", device="cuda")
    assert (gpu / "1" / "model.onnx").read_bytes() == int8.read_bytes()  # TensorRT/CUDA run the file


def test_static_onnx_is_copied_with_max_batch_0(sources, tmp_path):
    folder = export_triton(sources["onnx"], tmp_path / "repo", device="cuda", max_batch=0)
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


def test_cli_name_instances_and_refusals(sources, tmp_path, capsys):
    repo = tmp_path / "r"
    assert run(["export", str(sources["onnx"]), "--format", "triton", "--out", str(repo), "--name", "a",
                "--instances", "2"]) == 0
    cfg = _parse(repo / "a")
    assert cfg.name == "a" and cfg.instance_group[0].count == 2
    capsys.readouterr()
    for argv in (["--name", "a"], ["--name", "b", "--batch", "8"]):  # taken name; batch on a static graph
        assert run(["export", str(sources["onnx"]), "--format", "triton", "--out", str(repo), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in repo.iterdir()) == ["a"]
    assert run(["export", str(sources["ckpt"]), "--instances", "2"]) == 2  # a triton option elsewhere
    assert "--format triton only" in capsys.readouterr().err
