"""TorchSegmenter's inference copy: BN folding (``fuse_bn``) and the half-weights cast plan.

The CUDA half path itself runs in test_gpu.py; here the decision (which dtype, autocast or not)
and the host side of half logits (float32 numpy out, argmax unchanged) are checked on the CPU.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cityseg_deploy import runtime
from cityseg_deploy.models.checkpoint import ModelMeta, save_checkpoint
from cityseg_deploy.models.registry import build_model
from cityseg_deploy.runtime.torch_backend import CastPlan, cast_plan
from test_models_fuse import randomise_bn

SIZE = (64, 128)


@pytest.fixture(scope="module", params=["deeplabv3_small", "denseaspp_small"])
def ckpt(request, tmp_path_factory):
    torch.manual_seed(0)
    meta = ModelMeta.for_arch(request.param, input_size=SIZE)
    path = tmp_path_factory.mktemp("fuse") / f"{request.param}.pt"
    save_checkpoint(path, randomise_bn(build_model(request.param, **meta.arch_args)), meta)
    return path


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (2, *SIZE, 3), dtype=np.uint8)


def test_fuse_bn_same_logits(ckpt, images):
    plain = runtime.load(ckpt, fuse_bn=False)
    fused = runtime.load(ckpt)  # fuse_bn=True is the default
    assert plain.describe()["bn_folded"] == 0
    assert fused.describe()["bn_folded"] == {"deeplabv3_small": 24, "denseaspp_small": 15}[ckpt.stem]
    ref, out = plain.predict_logits(images), fused.predict_logits(images)
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-4
    assert np.array_equal(plain.predict(images), fused.predict(images))


@pytest.mark.parametrize("device,precision,autocast,expected", [
    ("cpu", "fp32", False, CastPlan(torch.float32, None, False)),
    ("cpu", "bf16", False, CastPlan(torch.float32, torch.bfloat16, True)),   # CPU: always autocast
    ("cpu", "bf16", True, CastPlan(torch.float32, torch.bfloat16, True)),
    ("cuda", "fp32", False, CastPlan(torch.float32, None, True)),
    ("cuda", "fp32", True, CastPlan(torch.float32, None, True)),             # nothing to autocast
    ("cuda", "fp16", False, CastPlan(torch.float16, None, True)),            # half weights
    ("cuda", "bf16", False, CastPlan(torch.bfloat16, None, True)),
    ("cuda", "fp16", True, CastPlan(torch.float32, torch.float16, True)),    # the old path
    ("cuda", "bf16", True, CastPlan(torch.float32, torch.bfloat16, True)),
])
def test_cast_plan(device, precision, autocast, expected):
    assert cast_plan(device, precision, autocast=autocast) == expected


def test_cast_plan_channels_last_override():
    assert cast_plan("cuda", "fp16", channels_last=False).channels_last is False
    assert cast_plan("cpu", "fp32", channels_last=True).channels_last is True


def test_describe_reports_the_plan(ckpt):
    d = runtime.load(ckpt).describe()
    assert (d["weights"], d["autocast"], d["channels_last"]) == ("fp32", None, False)


def test_half_logits_reach_the_host_as_float32(ckpt, images):
    """What the CUDA half-weights path returns (half logits), reproduced on the CPU in bf16."""
    seg = runtime.load(ckpt)
    seg.plan = CastPlan(torch.bfloat16, None, False)
    seg.model = seg._forward = seg.model.to(torch.bfloat16)
    with torch.inference_mode():
        raw = seg.compute(seg.to_device(seg.preprocess(images)))
    assert raw.dtype == torch.bfloat16
    logits = seg.predict_logits(images)
    assert logits.dtype == np.float32 and logits.shape == (2, 19, *SIZE)
    np.testing.assert_array_equal(logits, raw.float().numpy())
    np.testing.assert_array_equal(seg.predict(images), raw.argmax(1).to(torch.uint8).numpy())
