"""The CUDA path, proven on a real GPU: every test here is ``gpu``-marked and skips (with the
reason) where no CUDA GPU is visible.  Run with ``python3 -m pytest -m gpu``.

The independent truth is the same network on the CPU in fp32: the CUDA runner in IEEE fp32 must
equal it to 1e-3 relative logit error; half precision, CUDA graphs, torch.compile and AOTInductor
are held to argmax agreement with it.  Networks are the small presets with fixed random weights:
their logits are close together, which makes agreement a strict test of precision loss.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from cityseg_deploy import runtime
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.models.checkpoint import ModelMeta, read_checkpoint, save_checkpoint
from cityseg_deploy.models.registry import build_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ARCHS = ("deeplabv3_small", "unet_small", "denseaspp_small")
SIZE = (64, 128)


@pytest.fixture(scope="module", params=ARCHS)
def ckpt(request, tmp_path_factory):
    torch.manual_seed(0)
    meta = ModelMeta.for_arch(request.param, input_size=SIZE)
    path = tmp_path_factory.mktemp("gpu") / f"{request.param}.pt"
    save_checkpoint(path, build_model(request.param, **meta.arch_args).eval(), meta)
    return path


@pytest.fixture(scope="module")
def deeplab(tmp_path_factory):
    """One network for the compiling tests (each compile costs tens of seconds)."""
    torch.manual_seed(0)
    meta = ModelMeta.for_arch("deeplabv3_small", input_size=SIZE)
    path = tmp_path_factory.mktemp("gpu_compile") / "deeplabv3_small.pt"
    save_checkpoint(path, build_model("deeplabv3_small", **meta.arch_args).eval(), meta)
    return path


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # smooth random images: a blurred field is closer to a photo than white noise
    small = rng.integers(0, 256, (4, SIZE[0] // 8, SIZE[1] // 8, 3), dtype=np.uint8)
    return np.stack([np.asarray(__import__("cv2").resize(im, SIZE[::-1]), np.uint8) for im in small])


def cpu_logits(path, images):
    return runtime.load(path, device="cpu").predict_logits(images)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


def test_cuda_fp32_is_ieee_fp32(ckpt, images):
    seg = runtime.load(f"{ckpt}@fp32", device="cuda")
    assert seg.describe()["tf32"] is False
    assert rel_err(cpu_logits(ckpt, images), seg.predict_logits(images)) < 1e-3


def test_cuda_default_is_fp16_channels_last_graphs(ckpt, images):
    """A plain checkpoint on CUDA: fp16 weights, channels_last, CUDA graphs — and the runner line
    says so; its labels agree with the CPU fp32 reference as fp16 must."""
    seg = runtime.load(ckpt, device="cuda")
    d = seg.describe()
    assert (d["precision"], d["weights"], d["channels_last"], d["cuda_graphs"]) == ("fp16", "fp16", True, True)
    assert seg.runner().startswith("torch fp16 channels_last cuda-graphs on cuda")
    assert agreement(cpu_logits(ckpt, images), seg.predict_logits(images)) >= 0.97


def test_cuda_tf32_is_asked_for(ckpt, images):
    seg = runtime.load(f"{ckpt}@tf32", device="cuda")
    d = seg.describe()
    assert (d["precision"], d["weights"], d["tf32"]) == ("tf32", "fp32", True)
    assert rel_err(cpu_logits(ckpt, images), seg.predict_logits(images)) < 2e-2


@pytest.mark.parametrize("autocast", [False, True], ids=["half_weights", "autocast"])
@pytest.mark.parametrize("precision,min_agree,max_rel", [("fp16", 0.97, 2e-2), ("bf16", 0.90, 1e-1)])
def test_cuda_half_channels_last(ckpt, images, precision, min_agree, max_rel, autocast):
    seg = runtime.load(ckpt, device="cuda", precision=precision, autocast=autocast)
    d = seg.describe()
    assert d["channels_last"] is True
    assert (d["weights"], d["autocast"]) == (("fp32", precision) if autocast else (precision, None))
    ref, out = cpu_logits(ckpt, images), seg.predict_logits(images)
    assert agreement(ref, out) >= min_agree
    assert rel_err(ref, out) < max_rel


def test_cuda_graphs_replay_new_inputs(ckpt, images):
    eager = runtime.load(ckpt, device="cuda", precision="fp16", cuda_graphs=False)
    graphed = runtime.load(ckpt, device="cuda", precision="fp16", cuda_graphs=True)
    first = graphed.predict_logits(images[:2])
    second = graphed.predict_logits(images[2:])  # same shape: the captured graph replays
    assert len(graphed._graphs) == 1
    assert not np.allclose(first, second)  # not the stale output of the first capture
    assert agreement(eager.predict_logits(images[2:]), second) >= 0.999
    graphed.predict(images[0])  # a new batch size captures a second graph
    assert len(graphed._graphs) == 2


def test_cuda_inference_rewrites_match_plain_runner(ckpt, images):
    """Affine pre-activation BNs and in-place concatenation (DenseASPP) change no label: the
    fp32 runner with them equals the one without them and the CPU reference."""
    plain = runtime.load(ckpt, device="cuda", precision="fp32", bn_affine=False, concat_in_place=False)
    fast = runtime.load(ckpt, device="cuda", precision="fp32", cuda_graphs=True)
    ref = cpu_logits(ckpt, images)
    assert rel_err(ref, fast.predict_logits(images)) < 1e-3
    assert rel_err(plain.predict_logits(images), fast.predict_logits(images)) < 1e-3


def test_torch_compile_equals_eager(deeplab, images):
    seg = runtime.load(deeplab, device="cuda", precision="fp32", compile=True)
    assert rel_err(cpu_logits(deeplab, images), seg.predict_logits(images)) < 1e-3


def test_aoti_cuda_packages(deeplab, images, synth_root, tmp_path):
    ckpt = deeplab
    from cityseg_deploy.export import export

    ref = cpu_logits(ckpt, images)
    fp32 = export(ckpt, format="aoti", device="cuda", size=SIZE, out=tmp_path / "m.pt2",
                  data=synth_root, log=None)
    seg = runtime.load(fp32.path, device="cuda")
    assert agreement(ref, seg.predict_logits(images)) >= 0.99
    with pytest.raises(CitysegError, match="compiled for cuda"):
        runtime.load(fp32.path, device="cpu")
    half = export(ckpt, format="aoti", precision="fp16", device="cuda", size=SIZE,
                  out=tmp_path / "m_fp16.pt2", data=synth_root, log=None)
    seg16 = runtime.load(half.path, device="cuda")
    assert seg16.precision == "fp16"
    assert agreement(ref, seg16.predict_logits(images)) >= 0.97


def test_bench_row_on_cuda_has_every_stage(ckpt):
    from cityseg_deploy.bench.benchmark import bench_one

    row = bench_one(str(ckpt), device="cuda", precision="fp16", size=SIZE, warmup=2, iters=5,
                    options={"cuda_graphs": True})
    assert row["status"] == "ok", row["error"]
    assert set(row["stages"]) >= {"preprocess", "h2d", "compute", "d2h", "end_to_end"}
    assert row["device_peak_mb"] > 0 and row["detail"]["cuda_graphs"] is True


def _ort_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(not _ort_cuda(), reason="onnxruntime-gpu (CUDAExecutionProvider) not installed")
def test_onnxruntime_cuda_io_binding(ckpt, images, synth_root, tmp_path):
    from cityseg_deploy.export import export

    onnx_path = export(ckpt, format="onnx", size=SIZE, out=tmp_path / "m.onnx", data=synth_root,
                       log=None).path
    seg = runtime.load(onnx_path, device="cuda")
    assert seg.describe()["providers"][0] == "CUDAExecutionProvider"
    assert rel_err(cpu_logits(ckpt, images), seg.predict_logits(images)) < 1e-3


@pytest.mark.skipif(not _ort_cuda(), reason="onnxruntime-gpu (CUDAExecutionProvider) not installed")
def test_onnxruntime_cuda_graph_replays_new_inputs(ckpt, images, synth_root, tmp_path):
    from cityseg_deploy.export import export

    onnx_path = export(ckpt, format="onnx", precision="fp16", size=SIZE, batch=2,
                       out=tmp_path / "m16.onnx", data=synth_root, log=None).path
    plain = runtime.load(onnx_path, device="cuda")
    graphed = runtime.load(onnx_path, device="cuda", cuda_graph=True)
    first, second = graphed.predict_logits(images[:2]), graphed.predict_logits(images[2:])
    assert not np.allclose(first, second)  # replays read the new input
    assert agreement(plain.predict_logits(images[2:]), second) >= 0.999
    assert agreement(cpu_logits(ckpt, images[2:]), second) >= 0.97


TINY = {"model": "unet_small", "epochs": 1, "batch_size": 2, "lr": 3e-3, "train_size": [32, 64],
        "val_size": [32, 64], "label_set": "cityscapes10", "augment": {"scale": [1.0, 1.0]}}


@pytest.mark.skipif(not torch.distributed.is_nccl_available(), reason="torch built without NCCL")
def test_torchrun_nccl_world_size_one(synth_root, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
           "-m", "cityseg_deploy", "train", "--recipe", str(recipe), "--data", str(synth_root),
           "--out", str(out), "--device", "cuda", "--no-progress"]
    proc = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["meta"]["extra"]["world_size"] == 1
    assert ckpt["train_state"]["step"] == 3  # 6 train images, batch 2
    assert all(t.device.type == "cpu" for t in ckpt["state_dict"].values())


def test_segment_device_stage_on_cuda(ckpt, images):
    """The GPU inference stage of segment (pinned upload, overlay on the device, two batches in
    flight) gives predict()'s labels and the OpenCV renderer's frames."""
    from cityseg_deploy.video import Renderer
    from cityseg_deploy.video.device_stage import TorchDeviceStage, device_stage

    seg = runtime.load(ckpt, device="cuda")
    render = Renderer(seg.meta.palette, mode="overlay", alpha=0.5)
    stage = device_stage(seg, render)
    assert isinstance(stage, TorchDeviceStage) and stage.cuda
    stage.warm_up(2)
    frames = list(images)
    a, b = stage.submit(frames[:2]), stage.submit(frames[2:])
    (la, da), (lb, db) = stage.collect(a), stage.collect(b)
    labels = np.concatenate([la, lb])
    want = seg.predict(images)
    assert (labels == want).mean() >= 0.99  # same runner, fp16; batches of 2 vs 4 may pick other kernels
    for image, lab, drawn in zip(frames, labels, da + db):
        assert np.abs(drawn.astype(int) - render(image, lab).astype(int)).max() <= 1
