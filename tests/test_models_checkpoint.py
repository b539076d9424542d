"""Checkpoint round trips, the registry's errors, ``cityseg models``, and torchvision parity."""
from __future__ import annotations

import pytest
import torch

import cityseg_deploy
from cityseg_deploy.cli import run
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.models import ModelMeta, build_model, load_checkpoint, save_checkpoint
from cityseg_deploy.models.deeplabv3 import replace_classifier


@pytest.mark.parametrize("arch", ["deeplabv3_small", "unet_small", "denseaspp_small"])
def test_save_load_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    model = build_model(arch).eval()
    meta = ModelMeta.for_arch(arch)
    save_checkpoint(tmp_path / "m.pt", model, meta)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["meta"]["arch"] == arch
    loaded, meta2 = load_checkpoint(tmp_path / "m.pt")
    assert not loaded.training and meta2.class_names == meta.class_names
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    via_api = cityseg_deploy.load_model(tmp_path / "m.pt")
    assert via_api.cityseg_meta.arch == arch


def test_round_trip_with_arch_args(tmp_path):
    model = build_model("deeplabv3_small", aux_loss=True, atrous_rates=(2, 4, 6))
    save_checkpoint(tmp_path / "m.pt", model, ModelMeta.for_arch("deeplabv3_small", aux_loss=True,
                                                                 atrous_rates=[2, 4, 6]))
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    assert loaded.aux_classifier is not None
    assert loaded.classifier[0].convs[1][0].dilation == (2, 2)


def test_checkpoint_of_other_arch_names_keys(tmp_path):
    model = build_model("unet_small")
    meta = ModelMeta.for_arch("unet_small")
    meta.arch, meta.arch_args = "denseaspp_small", {"num_classes": 10}
    save_checkpoint(tmp_path / "m.pt", model, meta)
    with pytest.raises(CitysegError, match=r"do not fit denseaspp_small: missing \['features"):
        load_checkpoint(tmp_path / "m.pt")


def test_unknown_arch_suggests():
    with pytest.raises(CitysegError, match=r"unknown architecture 'deeplabv3_resnet'.*did you mean 'deeplabv3_resnet50'"):
        build_model("deeplabv3_resnet")


def test_bad_builder_argument():
    with pytest.raises(CitysegError, match="bad arguments"):
        build_model("unet", no_such_option=1)


def test_replace_classifier_for_cityscapes():
    model = replace_classifier(build_model("deeplabv3_small", num_classes=21, aux_loss=True), 19)
    assert model.classifier[-1].out_channels == 19 and model.aux_classifier[-1].out_channels == 19
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 19, 32, 32)


def test_cli_models_table(capsys):
    assert run(["models", "--size", "64x128"]) == 0
    out = capsys.readouterr().out
    for arch in ("deeplabv3_resnet50", "unet", "denseaspp161", "denseaspp121", "deeplabv3_small",
                 "unet_small", "denseaspp_small"):
        assert arch in out
    assert "cityscapes10" in out and "64x128" in out
    assert run(["models", "--size", "big"]) == 2


def _torchvision_segmentation():
    try:
        from torchvision.models.segmentation import deeplabv3_resnet50
    except Exception:  # not installed, or installed but built for another torch
        return None
    return deeplabv3_resnet50


@pytest.mark.skipif(_torchvision_segmentation() is None, reason="torchvision not importable here")
def test_same_outputs_as_torchvision_deeplabv3():
    tv = _torchvision_segmentation()(weights=None, weights_backbone=None, num_classes=21, aux_loss=True).eval()
    ours = build_model("deeplabv3_resnet50", num_classes=21, aux_loss=True).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x)["out"])
