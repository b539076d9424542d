"""Every backend gives the same labels for the same image, within its precision.

Thresholds (measured on the tiny fitted DeepLabV3 at 64x128 over the 4 synthetic val images):
torch vs onnxruntime fp32 >= 99.9 % label agreement; OpenVINO fp32 IR logits equal PyTorch's
within 1e-3 relative error (the proof it ran f32, not bf16); int8 QDQ graphs (onnxruntime and
OpenVINO) >= 90 % agreement with fp32 PyTorch (measured ~97-99 % here; a small, barely trained
network has thin logit margins, so real models agree more).
"""
from __future__ import annotations

import numpy as np
import pytest

from cityseg_deploy import runtime
from cityseg_deploy.data import CityscapesDataset
from cityseg_deploy.errors import CitysegError
from test_runtime_artifacts import SIZE, arts  # noqa: F401  (session fixture)


@pytest.fixture(scope="module")
def val_images(synth_root):
    ds = CityscapesDataset(synth_root, "val")
    return [ds[i][0] for i in range(len(ds))]


@pytest.fixture(scope="module")
def reference(arts, val_images):
    seg = runtime.load(arts["ckpt"], threads=1)
    return seg.predict(val_images), seg.predict_logits(val_images)


def agreement(a, b) -> float:
    return float((np.asarray(a) == np.asarray(b)).mean())


def test_onnxruntime_fp32_matches_torch(arts, val_images, reference):
    seg = runtime.load(arts["onnx"], threads=1)
    assert seg.backend == "onnxruntime"
    assert agreement(seg.predict(val_images), reference[0]) >= 0.999


def test_openvino_fp32_logits_equal_torch(arts, val_images, reference):
    seg = runtime.load(arts["ov"], threads=1)
    assert seg.describe()["inference_precision"] == "f32"
    logits = seg.predict_logits(val_images)
    rel = np.abs(logits - reference[1]).max() / np.abs(reference[1]).max()
    assert rel < 1e-3, rel
    assert agreement(seg.predict(val_images), reference[0]) >= 0.999


@pytest.mark.parametrize("name", ["onnx_int8", "ov_int8"])
def test_int8_agreement(arts, val_images, reference, name):
    seg = runtime.load(arts[name], threads=1)
    assert seg.precision == "int8"
    assert agreement(seg.predict(val_images), reference[0]) >= 0.90


def test_predict_shapes_and_batches(arts, val_images):
    seg = runtime.load(arts["onnx"], threads=1)
    odd = np.ascontiguousarray(val_images[0][:50, :90])  # not the model size: resized back
    single = seg.predict(odd)
    assert single.shape == (50, 90) and single.dtype == np.uint8
    batch = seg.predict(np.stack(val_images[:3]))  # NHWC array through a batch-1 static graph
    assert batch.shape == (3, *val_images[0].shape[:2])
    assert np.array_equal(batch[1], seg.predict(val_images[1]))
    mixed = seg.predict([odd, val_images[0]])
    assert isinstance(mixed, list) and mixed[0].shape == (50, 90)
    assert seg.predict_logits(val_images[0]).shape == (1, 19, *SIZE)


def test_openvino_throughput_queue_equals_latency(arts, val_images):
    lat = runtime.load(arts["ov"], threads=1, mode="latency")
    thr = runtime.load(arts["ov"], threads=2, mode="throughput", streams=2)
    assert np.array_equal(lat.predict(val_images), thr.predict(val_images))
    assert thr.describe()["streams"] == 2


def test_model_spec_precision_suffix():
    assert runtime.parse_model_spec("a/b.pt@bf16") == ("a/b.pt", "bf16")
    assert runtime.parse_model_spec("a@b/c.onnx") == ("a@b/c.onnx", None)


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8),
                                 np.zeros((8, 8, 3), np.float32), np.zeros((1, 1, 8, 8, 3), np.uint8)])
def test_bad_images_raise(arts, bad):
    seg = runtime.load(arts["ckpt"], threads=1)
    with pytest.raises(CitysegError, match="image"):
        seg.predict(bad)


def test_torch_bf16_refused_without_native_support(arts, no_native_bf16):
    with pytest.raises(CitysegError, match="bf16"):
        runtime.load(f"{arts['ckpt']}@bf16")


def test_torch_bf16_on_cpu(arts, val_images, reference, no_native_bf16):
    """oneDNN's emulation (forced, as on a CPU without native bf16) rounds as native bf16 does."""
    seg = runtime.load(arts["ckpt"], precision="bf16", threads=1, allow_emulated_bf16=True)
    assert seg.describe()["emulated_bf16"] is True
    logits = seg.predict_logits(val_images)
    err = np.abs(logits - reference[1]).mean()
    assert 1e-4 < err < 0.1, err  # bf16 (8 significant bits), not fp32 (~1e-6)
    assert agreement(seg.predict(val_images), reference[0]) >= 0.95


def test_static_graph_refuses_other_size(arts):
    with pytest.raises(CitysegError, match="static graph"):
        runtime.load(arts["onnx"], size=(32, 64))


def test_torch_runs_any_size(arts, val_images):
    seg = runtime.load(arts["ckpt"], threads=1, size=(32, 64))
    assert seg.predict(val_images[0]).shape == val_images[0].shape[:2]
    assert seg.predict_logits(val_images[0]).shape == (1, 19, 32, 64)


def test_device_normaliser_equals_the_host_one():
    """The on-device normalisation (torch and onnxruntime on CUDA) = the host one = the formula."""
    import torch

    from cityseg_deploy.runtime.base import device_normaliser, normalise_nchw

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    nhwc = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    host = normalise_nchw(nhwc, mean, std)
    device = device_normaliser(mean, std, "cpu")(torch.from_numpy(nhwc)).numpy()
    formula = (nhwc.transpose(0, 3, 1, 2) / 255.0 - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))
    assert device.shape == host.shape == (2, 3, 5, 7)
    np.testing.assert_allclose(device, host, atol=1e-6)
    np.testing.assert_allclose(host, formula, atol=1e-5)


@pytest.mark.parametrize("name", ["ckpt", "onnx", "onnx_int8", "ov", "ov_int8"])
def test_predict_leaves_the_callers_image_alone(arts, val_images, name):
    """A single image at model size reaches the backend as a view (no copy): no backend may
    write into it."""
    image = np.ascontiguousarray(val_images[0][: SIZE[0], : SIZE[1]])
    assert image.shape[:2] == SIZE
    before = image.copy()
    runtime.load(arts[name], threads=1).predict(image)
    np.testing.assert_array_equal(image, before)


def test_cpu_argmax_equals_numpy_including_ties():
    """The running-maximum argmax (CPU) = numpy's argmax, ties resolved to the lowest class."""
    import torch

    from cityseg_deploy.runtime.base import argmax_labels

    rng = np.random.default_rng(0)
    tied = rng.integers(0, 3, (2, 19, 16, 24)).astype(np.float32)  # many exact ties
    smooth = rng.standard_normal((1, 10, 33, 17)).astype(np.float32)
    for logits in (tied, smooth, smooth.astype(np.float16)):
        truth = logits.argmax(1).astype(np.uint8)
        np.testing.assert_array_equal(argmax_labels(logits), truth)
        np.testing.assert_array_equal(argmax_labels(torch.from_numpy(logits)), truth)


def test_a_segmenter_closes_when_its_with_block_ends(arts, val_images, monkeypatch):
    closed = []
    seg = runtime.load(arts["onnx"])
    monkeypatch.setattr(seg, "close", lambda: closed.append(True))
    with pytest.raises(CitysegError), seg as same:
        assert same is seg and same.predict(val_images[0]).shape == val_images[0].shape[:2]
        same.predict(np.zeros((4, 4), np.uint8))  # a bad image inside the block
    assert closed == [True]
