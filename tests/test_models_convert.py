"""Weight conversion: each source format round-trips into our checkpoint, tensor for tensor.

The "foreign" files are made from our own models renamed *the other way* (``norm1`` → ``norm.1``,
``module.`` prefix, ``mask_values``, no ``num_batches_tracked``), so every filter is checked
without downloading anything.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from cityseg_deploy.cli import run
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.models import build_model, load_checkpoint
from cityseg_deploy.models.convert import convert_weights, voc_palette


def _to_release(state_dict):
    """Our DenseASPP names → the release's: dotted parts, ``module.``, no num_batches_tracked."""
    out = {}
    for k, v in state_dict.items():
        if k.endswith("num_batches_tracked"):
            continue
        out["module." + re.sub(r"(?<=\.)(norm|relu|conv)(\d)(?=\.)", r"\1.\2", k)] = v.clone()
    return out


def _assert_weights_equal(model, reference, *, keys=None):
    sd, ref = model.state_dict(), reference.state_dict()
    for k in keys or ref:
        if k.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(sd[k], ref[k], rtol=0, atol=0, msg=k)


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model


def test_torchvision_deeplabv3_file_keeps_21_classes_and_aux(tmp_path):
    src = _randomise_bn(build_model("deeplabv3_small", num_classes=21, aux_loss=True))
    torch.save(src.state_dict(), tmp_path / "tv.pth")
    out = convert_weights(tmp_path / "tv.pth", "deeplabv3_small", tmp_path / "ckpt.pt")
    model, meta = load_checkpoint(out)
    _assert_weights_equal(model, src)
    assert meta.num_classes == 21 and meta.label_set == "coco21"
    assert meta.class_names[0] == "__background__" and meta.arch_args["aux_loss"] is True
    assert meta.palette[:3] == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    assert meta.extra["source_kind"] == "torchvision-deeplabv3"
    payload = torch.load(out, weights_only=True)
    assert payload["format"] == "cityseg-checkpoint"


@pytest.mark.parametrize("bilinear", [False, True])
def test_milesial_unet_file_drops_mask_values(tmp_path, bilinear):
    src = build_model("unet_small", num_classes=2, bilinear=bilinear)
    sd = src.state_dict()
    sd["mask_values"] = [0, 255]
    torch.save(sd, tmp_path / "unet.pth")
    model, meta = load_checkpoint(convert_weights(tmp_path / "unet.pth", "unet_small", tmp_path / "u.pt"))
    _assert_weights_equal(model, src)
    assert meta.label_set == "custom2" and meta.class_names == ["class_0", "class_1"]
    assert meta.arch_args["bilinear"] is bilinear and meta.arch_args["base_width"] == 16
    assert meta.mean == [0.0, 0.0, 0.0]


def test_milesial_unet_10_classes_is_cityscapes10(tmp_path):
    src = build_model("unet_small")
    torch.save({"state_dict": src.state_dict()}, tmp_path / "u10.pth")
    _, meta = load_checkpoint(convert_weights(tmp_path / "u10.pth", "unet_small", tmp_path / "u.pt"))
    assert meta.label_set == "cityscapes10"


def test_denseaspp_release_file_renamed_and_buffers_filled(tmp_path):
    src = _randomise_bn(build_model("denseaspp_small"))
    release = _to_release(src.state_dict())
    assert "module.features.denseblock1.denselayer1.norm.1.weight" in release
    assert "module.ASPP_6.conv.2.bias" in release
    torch.save(release, tmp_path / "denseASPP.pkl")
    model, meta = load_checkpoint(convert_weights(tmp_path / "denseASPP.pkl", "denseaspp_small", tmp_path / "d.pt"))
    _assert_weights_equal(model, src)
    assert meta.label_set == "cityscapes19" and meta.extra["source_kind"] == "denseaspp-release"
    assert meta.mean == pytest.approx([0.290101, 0.328081, 0.286964])


def test_full_pickled_module_is_read_only_with_trust_pickle(tmp_path):
    src = build_model("denseaspp_small", num_classes=5)
    torch.save(src, tmp_path / "whole.pkl")  # a pickle with classes: only weights_only=False reads it
    with pytest.raises(CitysegError, match=r"refused to unpickle the Python object '.*DenseASPP'.*--trust-pickle"):
        convert_weights(tmp_path / "whole.pkl", "denseaspp_small", tmp_path / "w.pt")
    assert not (tmp_path / "w.pt").exists()
    model, meta = load_checkpoint(convert_weights(tmp_path / "whole.pkl", "denseaspp_small", tmp_path / "w.pt",
                                                  trust_pickle=True))
    _assert_weights_equal(model, src)
    assert meta.label_set == "custom5" and len(meta.palette) == 5


def test_imagenet_resnet_fills_backbone_only(tmp_path):
    donor = build_model("deeplabv3_small")
    sd = {k[len("backbone."):]: v.clone() + 1 for k, v in donor.state_dict().items() if k.startswith("backbone.")}
    sd["fc.weight"] = torch.zeros(1000, 512)
    sd["fc.bias"] = torch.zeros(1000)
    torch.save(sd, tmp_path / "resnet.pth")
    model, meta = load_checkpoint(convert_weights(tmp_path / "resnet.pth", "deeplabv3_small", tmp_path / "r.pt"))
    for k, v in sd.items():
        if not k.startswith("fc."):
            torch.testing.assert_close(model.state_dict()["backbone." + k], v)
    assert meta.extra["backbone_only"] is True and meta.num_classes == 19


def test_imagenet_densenet_old_names_fill_features(tmp_path):
    donor = build_model("denseaspp_small")
    sd = {k: v.clone() + 1 for k, v in donor.state_dict().items()
          if k.startswith("features.") and "transition4" not in k and "norm5" not in k}
    sd = {re.sub(r"(?<=\.)(norm|relu|conv)(\d)(?=\.)", r"\1.\2", k): v for k, v in sd.items()}
    sd |= {"features.norm5.weight": torch.ones(99), "features.norm5.bias": torch.zeros(99),
           "classifier.weight": torch.zeros(1000, 99), "classifier.bias": torch.zeros(1000)}
    torch.save(sd, tmp_path / "densenet.pth")
    model, meta = load_checkpoint(convert_weights(tmp_path / "densenet.pth", "denseaspp_small", tmp_path / "dn.pt"))
    assert torch.equal(model.state_dict()["features.denseblock2.denselayer1.conv2.weight"],
                       sd["features.denseblock2.denselayer1.conv.2.weight"])
    assert meta.extra["source_kind"] == "imagenet-densenet"


def test_file_for_another_arch_names_the_keys(tmp_path):
    torch.save(build_model("unet_small").state_dict(), tmp_path / "unet.pth")
    with pytest.raises(CitysegError, match=r"do not look like weights for 'denseaspp_small'.*inc\.double_conv"):
        convert_weights(tmp_path / "unet.pth", "denseaspp_small", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_wrong_file_names_missing_unexpected_and_mismatched_keys(tmp_path):
    sd = build_model("deeplabv3_small").state_dict()
    del sd["classifier.1.weight"]
    sd["classifier.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "small.pth")
    with pytest.raises(CitysegError) as info:
        convert_weights(tmp_path / "small.pth", "deeplabv3_small", tmp_path / "x.pt")
    message = str(info.value)
    assert "missing keys: classifier.1.weight;" in message
    assert "unexpected keys: classifier.extra.weight;" in message
    with pytest.raises(CitysegError, match=r"backbone.conv1.weight \(16, 3, 7, 7\) vs \(64, 3, 7, 7\)"):
        convert_weights(tmp_path / "small.pth", "deeplabv3_resnet50", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CitysegError, match="no such weights file"):
        convert_weights(tmp_path / "nope.pth", "unet", tmp_path / "x.pt")
    (tmp_path / "bad.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(CitysegError, match="not a readable PyTorch weights file"):
        convert_weights(tmp_path / "bad.pth", "unet", tmp_path / "x.pt")
    with pytest.raises(CitysegError, match="did you mean 'unet'"):
        convert_weights(tmp_path / "bad.pth", "unte", tmp_path / "x.pt")


def test_cli_convert_weights(tmp_path, capsys):
    torch.save(build_model("unet_small").state_dict(), tmp_path / "u.pth")
    assert run(["convert-weights", str(tmp_path / "u.pth"), "--arch", "unet_small", "--out", str(tmp_path / "u.pt")]) == 0
    assert "10 classes (cityscapes10)" in capsys.readouterr().out
    assert run(["convert-weights", str(tmp_path / "u.pth"), "--arch", "denseaspp161", "--out", str(tmp_path / "d.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not Path(tmp_path / "d.pt").exists()


def test_voc_palette_is_distinct():
    palette = voc_palette(256)
    assert len({tuple(c) for c in palette}) == 256


def test_pickle_of_unimportable_code_says_what_to_do(tmp_path):
    import pickle
    import sys
    import types

    fake = types.ModuleType("fake_release_models")
    exec("class Net:\n    pass\n", fake.__dict__)
    fake.Net.__module__ = "fake_release_models"
    sys.modules["fake_release_models"] = fake
    try:
        torch.save({"model": fake.Net()}, tmp_path / "whole.pkl", pickle_module=pickle)
    finally:
        del sys.modules["fake_release_models"]
    with pytest.raises(CitysegError, match="'fake_release_models.Net'.*--trust-pickle.*state_dict"):
        convert_weights(tmp_path / "whole.pkl", "denseaspp161", tmp_path / "x.pt")
    with pytest.raises(CitysegError, match="'fake_release_models'.*state_dict"):
        convert_weights(tmp_path / "whole.pkl", "denseaspp161", tmp_path / "x.pt", trust_pickle=True)


def _next_command(text: str, root) -> list[str]:
    """The ``next:`` line's command, ROOT replaced by a real data root, as argv for cli.run."""
    import shlex

    line = next(l for l in text.splitlines() if l.startswith("next: "))
    argv = shlex.split(line[len("next: "):].replace("ROOT", str(root)))
    assert argv[0] == "cityseg"
    return argv[1:]


def test_convert_hint_of_cityscapes_weights_evaluates(tmp_path, synth_root, capsys):
    torch.save(build_model("deeplabv3_small").state_dict(), tmp_path / "cs.pth")
    assert run(["convert-weights", str(tmp_path / "cs.pth"), "--arch", "deeplabv3_small",
                "--out", str(tmp_path / "cs.pt")]) == 0
    argv = _next_command(capsys.readouterr().out, synth_root)
    assert argv[0] == "eval"
    assert run(argv + ["--no-progress"]) == 0  # the hint works as printed
    assert "| mIoU |" in capsys.readouterr().out


@pytest.mark.slow
def test_convert_hint_of_coco_weights_fine_tunes_instead_of_failing_eval(tmp_path, synth_root,
                                                                         capsys, monkeypatch):
    torch.save(build_model("deeplabv3_small", num_classes=21, aux_loss=True).state_dict(),
               tmp_path / "coco.pth")
    assert run(["convert-weights", str(tmp_path / "coco.pth"), "--arch", "deeplabv3_small",
                "--out", str(tmp_path / "coco.pt")]) == 0
    out = capsys.readouterr().out
    assert "not a Cityscapes class set" in out
    argv = _next_command(out, synth_root)
    assert argv[:3] == ["train", "--recipe", "deeplabv3_small"]
    assert f"init_weights={tmp_path / 'coco.pt'}" in argv
    # Evaluating it as it is stays refused (the README shows that error) ...
    assert run(["eval", str(tmp_path / "coco.pt"), "--data", str(synth_root)]) == 2
    # ... while the hinted command trains (made tiny here by appended overrides).
    monkeypatch.chdir(tmp_path)
    assert run(argv + ["--epochs", "1", "--set", "train_size=[32,64]", "--set", "val_size=[32,64]",
                       "--no-progress", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "init_weights:" in text and "re-initialised" in text
    assert (tmp_path / "runs" / "coco_ft" / "best.pt").is_file()


def test_convert_hint_for_an_arch_without_its_own_recipe_builds_a_valid_recipe():
    from cityseg_deploy.cli.models import _convert_hint
    from cityseg_deploy.models.checkpoint import ModelMeta
    from cityseg_deploy.training.recipe import load_recipe, parse_override
    import shlex

    meta = ModelMeta.for_arch("denseaspp121", label_set="cityscapes19", input_size=[512, 1024])
    meta.extra = {"backbone_only": True}
    note, command = _convert_hint("d121.pt", meta)
    assert "freshly initialised" in note
    argv = shlex.split(command)
    assert argv[:4] == ["cityseg", "train", "--recipe", "denseaspp161"]
    sets = dict(parse_override(argv[i + 1]) for i, a in enumerate(argv) if a == "--set")
    assert load_recipe(argv[3], sets).model == "denseaspp121"
