"""Forward contracts: logits NCHW at the input size (odd sizes too), aux dict only in training."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cityseg_deploy.models import build_model, get_default_cfg, list_models
from cityseg_deploy.models.flops import count_flops, format_table, model_stats

SMALL = ["deeplabv3_small", "unet_small", "denseaspp_small"]
FULL = ["deeplabv3_resnet50", "unet", "denseaspp161", "denseaspp121"]


def test_registry_lists_all_archs():
    assert set(SMALL + FULL) <= set(list_models())
    for arch in SMALL + FULL:
        cfg = get_default_cfg(arch)
        assert {"mean", "std", "input_size", "label_set", "num_classes"} <= set(cfg)
    assert get_default_cfg("unet")["label_set"] == "cityscapes10"
    assert get_default_cfg("unet")["mean"] == (0.0, 0.0, 0.0)
    assert get_default_cfg("denseaspp161")["mean"] == (0.290101, 0.328081, 0.286964)


@torch.no_grad()
@pytest.mark.parametrize("arch", SMALL)
@pytest.mark.parametrize("size", [(67, 93), (64, 128)])
def test_small_presets_return_logits_at_input_size(arch, size):
    torch.manual_seed(0)
    model = build_model(arch).eval()
    out = model(torch.randn(2, 3, *size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, get_default_cfg(arch)["num_classes"], *size)
    assert torch.isfinite(out).all()


@torch.no_grad()
@pytest.mark.parametrize("arch", FULL)
def test_full_models_return_logits_at_odd_input_size(arch):
    torch.set_num_threads(1)
    model = build_model(arch).eval()
    out = model(torch.randn(1, 3, 37, 53))
    assert out.shape == (1, get_default_cfg(arch)["num_classes"], 37, 53)


def test_deeplabv3_aux_dict_only_in_training():
    model = build_model("deeplabv3_small", aux_loss=True).train()
    out = model(torch.randn(2, 3, 33, 47))
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, 19, 33, 47)
    model.eval()
    with torch.no_grad():
        assert isinstance(model(torch.randn(1, 3, 33, 47)), torch.Tensor)


def test_small_presets_train_one_step():
    for arch in SMALL:
        model = build_model(arch).train()
        out = model(torch.randn(2, 3, 64, 64))
        loss = F.cross_entropy(out, torch.randint(0, out.shape[1], (2, 64, 64)))
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad), arch


@torch.no_grad()
def test_denseaspp_upsample_equals_x8_when_divisible():
    """Interpolating to the input size equals the release's ×8 (align_corners=True) for /8 sizes."""
    model = build_model("denseaspp_small").eval()
    x = torch.randn(1, 3, 64, 96)
    feature = model.features(x)
    for rate in model.rates:
        feature = torch.cat((getattr(model, f"ASPP_{rate}")(feature), feature), 1)
    x8 = F.interpolate(model.classification(feature), scale_factor=8, mode="bilinear", align_corners=True)
    torch.testing.assert_close(model(x), x8)


@torch.no_grad()
def test_unet_bilinear_variant_forward():
    model = build_model("unet_small", bilinear=True, num_classes=3).eval()
    assert model(torch.randn(1, 3, 45, 61)).shape == (1, 3, 45, 61)


def test_flops_on_meta_device_scale_with_pixels():
    a = model_stats("deeplabv3_resnet50", size=(256, 512))
    b = model_stats("deeplabv3_resnet50", size=(512, 1024))
    assert a.params == 39_638_355
    assert 3.5 < b.flops / a.flops < 4.5
    assert 100 < b.gflops < 2000
    model = build_model("unet_small")
    assert count_flops(model, (32, 32)) > 0
    assert "deeplabv3_resnet50" in format_table([a])
