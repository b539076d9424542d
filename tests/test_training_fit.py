"""fit(): files of a run, checkpoint format, exact resume, Ctrl-C, nan loss, mismatched resume."""
from __future__ import annotations

import csv

import pytest
import torch

from cityseg_deploy.errors import CitysegError
from cityseg_deploy.models import load_checkpoint, read_checkpoint
from cityseg_deploy.training import TrainingInterrupted, fit, recipe_from_dict
from cityseg_deploy.training import loop

TINY = {"epochs": 1, "batch_size": 2, "lr": 3e-3, "train_size": [32, 64], "val_size": [32, 64],
        "augment": {"scale": [0.75, 1.25], "hflip": 0.5, "jitter": True}, "seed": 3}


def tiny(model="unet_small", **changes):
    return recipe_from_dict({"model": model, **TINY, **changes})


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def test_fit_writes_the_run(synth_root, tmp_path):
    out = tmp_path / "run"
    result = fit(tiny(epochs=2, loss="ce+dice", scheduler="plateau", label_set="cityscapes10"),
                 synth_root, out, device="cpu", progress=False, log=None)
    for name in ("best.pt", "last.pt", "log.csv", "report.md", "curves.png"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and int(rows[-1]["step"]) == 6  # 6 images / 2
    assert {"train_loss", "lr", "val_miou", "val_per_pixel", "seconds"} <= set(rows[0])
    report = (out / "report.md").read_text()
    assert "mIoU" in report and "Jaccard (weighted)" in report and "curves.png" in report

    model, meta = load_checkpoint(out / "best.pt")
    assert meta.arch == "unet_small" and meta.label_set == "cityscapes10" and meta.num_classes == 10
    assert meta.input_size == [32, 64] and meta.extra["recipe"]["model"] == "unet_small"
    val = meta.extra["val"]
    assert set(val) >= {"per_pixel", "jaccard", "per_class_iou", "miou", "confusion"}
    assert val["miou"] == pytest.approx(result["best"]["miou"])
    raw = read_checkpoint(out / "last.pt")
    ts = raw["train_state"]
    assert {"optimizer", "scheduler", "rng", "epoch", "step", "history"} <= set(ts)
    assert ts["epoch"] == 2 and result["epochs_run"] == 2
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 64)).shape == (1, 10, 32, 64)


def _state(path):
    return read_checkpoint(path)["state_dict"]


def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_interrupted_and_resumed_equals_uninterrupted(synth_root, tmp_path, monkeypatch, deterministic):
    # dropout (ASPP), random scale/crop/flip/jitter and a poly schedule all must continue exactly
    recipe = tiny("deeplabv3_small", epochs=2, scheduler="poly", aux_loss_weight=0.4)
    fit(recipe, synth_root, tmp_path / "a", device="cpu", progress=False, log=None)

    real = loop.train_one_epoch

    def ctrl_c_in_epoch_2(*args, **kwargs):
        if args[5] == 2:  # (model, criterion, optimizer, loader, device, epoch): 1-based
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", ctrl_c_in_epoch_2)
    with pytest.raises(TrainingInterrupted, match=r"after epoch 1.*--resume"):
        fit(recipe, synth_root, tmp_path / "b", device="cpu", progress=False, log=None)
    assert read_checkpoint(tmp_path / "b" / "last.pt")["train_state"]["epoch"] == 1
    monkeypatch.setattr(loop, "train_one_epoch", real)
    result = fit(recipe, synth_root, tmp_path / "b", device="cpu", resume=True, progress=False, log=None)
    assert result["epochs_run"] == 2
    _same(_state(tmp_path / "a" / "last.pt"), _state(tmp_path / "b" / "last.pt"))
    a_opt = read_checkpoint(tmp_path / "a" / "last.pt")["train_state"]["optimizer"]["state"]
    b_opt = read_checkpoint(tmp_path / "b" / "last.pt")["train_state"]["optimizer"]["state"]
    for k in a_opt:
        assert torch.equal(a_opt[k]["exp_avg"], b_opt[k]["exp_avg"])
    rows = list(csv.DictReader((tmp_path / "b" / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(synth_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    fit(tiny(), synth_root, out, device="cpu", progress=False, log=None)
    before = _state(out / "last.pt")

    class NanLoss(loop.SegmentationLoss):
        def forward(self, output, target):
            return super().forward(output, target) * float("nan")

    monkeypatch.setattr(loop, "SegmentationLoss", NanLoss)
    with pytest.raises(CitysegError, match=r"loss became nan at epoch 2 step 4; last good checkpoint: .*last.pt \(after epoch 1\)"):
        fit(tiny(epochs=2), synth_root, out, device="cpu", resume=True, progress=False, log=None)
    _same(before, _state(out / "last.pt"))


def test_resume_refuses_another_label_set_or_arch(synth_root, tmp_path):
    out = tmp_path / "run"
    fit(tiny(), synth_root, out, device="cpu", progress=False, log=None)
    with pytest.raises(CitysegError, match="cannot resume.*label_set"):
        fit(tiny(epochs=2, label_set="cityscapes19"), synth_root, out, device="cpu", resume=True,
            progress=False, log=None)
    with pytest.raises(CitysegError, match="cannot resume.*arch"):
        fit(tiny("denseaspp_small", epochs=2, label_set="cityscapes10"), synth_root, out,
            device="cpu", resume=True, progress=False, log=None)
    with pytest.raises(CitysegError, match="already holds a training run"):
        fit(tiny(), synth_root, out, device="cpu", progress=False, log=None)
    with pytest.raises(CitysegError, match="nothing to resume"):
        fit(tiny(), synth_root, tmp_path / "empty", device="cpu", resume=True, progress=False, log=None)


def test_init_weights_copies_what_fits(synth_root, tmp_path):
    out = tmp_path / "src"
    fit(tiny("denseaspp_small", label_set="cityscapes10"), synth_root, out, device="cpu",
        progress=False, log=None)
    src = _state(out / "last.pt")
    lines = []
    fit(tiny("denseaspp_small", epochs=1, lr=1e-12, init_weights=str(out / "last.pt")),
        synth_root, tmp_path / "ft", device="cpu", progress=False, log=lines.append)
    assert any("re-initialised" in line for line in lines)  # 10 → 19 classes: classifier is new
    tuned = _state(tmp_path / "ft" / "last.pt")
    key = next(k for k in src if k.endswith("conv0.weight"))
    assert torch.allclose(src[key], tuned[key], atol=1e-6)


def test_missing_tensorboard_warns_once_and_trains(synth_root, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setattr(loop, "_TB_WARNED", False)
    with pytest.warns(UserWarning, match="TensorBoard logging off"):
        fit(tiny(), synth_root, tmp_path / "run", device="cpu", progress=False, log=None)
    assert (tmp_path / "run" / "best.pt").is_file()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_amp_channels_last_run(synth_root, tmp_path):
    # autocast (bf16 where supported, else fp16 + GradScaler), channels_last, pinned memory
    out = tmp_path / "gpu"
    result = fit(tiny("deeplabv3_small", epochs=2, aux_loss_weight=0.4), synth_root, out,
                 device="cuda", progress=False, log=None)
    assert result["best"]["miou"] > 0
    model, meta = load_checkpoint(out / "best.pt")
    assert next(model.parameters()).device.type == "cpu"  # checkpoints hold CPU tensors
    resumed = fit(tiny("deeplabv3_small", epochs=3, aux_loss_weight=0.4), synth_root, out,
                  device="cuda", resume=True, progress=False, log=None)
    assert resumed["epochs_run"] == 3


def test_amp_and_device_resolution_on_cpu():
    cpu = torch.device("cpu")
    assert loop.resolve_amp("auto", cpu) == (None, False)
    assert loop.resolve_amp("bf16", cpu) == (torch.bfloat16, False)
    with pytest.raises(CitysegError, match="fp16 needs a CUDA GPU"):
        loop.resolve_amp("fp16", cpu)
    assert loop.resolve_device("cpu") == cpu
    with pytest.raises(CitysegError, match="--device 'gpu7'"):
        loop.resolve_device("gpu7")


@pytest.mark.parametrize("scheduler", ["poly", "cosine"])
def test_resume_with_more_epochs_extends_the_schedule(synth_root, tmp_path, monkeypatch, scheduler):
    # a finished 2-epoch run resumed to 3 epochs used to start epoch 3 at the old run's final lr (0)
    lr_at_start = {}
    real = loop.train_one_epoch

    def record(*args, **kwargs):  # (model, criterion, optimizer, loader, device, epoch)
        lr_at_start[args[5]] = args[2].param_groups[0]["lr"]
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", record)
    out, lines = tmp_path / "run", []
    fit(tiny("deeplabv3_small", epochs=2, scheduler=scheduler), synth_root, out, device="cpu",
        progress=False, log=None)
    fit(tiny("deeplabv3_small", epochs=3, scheduler=scheduler), synth_root, out, device="cpu",
        resume=True, progress=False, log=lines.append)
    resumed = lr_at_start[3]
    assert any(f"lr schedule ({scheduler}) extended from 6 to 9 steps" in line for line in lines)
    lr_at_start.clear()
    fit(tiny("deeplabv3_small", epochs=3, scheduler=scheduler), synth_root, tmp_path / "fresh",
        device="cpu", progress=False, log=None)
    assert resumed > 0 and resumed == pytest.approx(lr_at_start[3], rel=1e-9)


def test_resume_with_another_poly_power_uses_it(synth_root, tmp_path, monkeypatch):
    """--set poly_power=... on resume: the rest of the run follows the new exponent (it used to
    keep the saved one silently).  Truth: a fresh 3-epoch run with the new power, and the
    closed form base * (1 - step / total) ** power."""
    lr_at_start = {}
    real = loop.train_one_epoch

    def record(*args, **kwargs):
        lr_at_start[args[5]] = args[2].param_groups[0]["lr"]
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", record)
    out, lines = tmp_path / "run", []
    fit(tiny("deeplabv3_small", epochs=1, scheduler="poly", poly_power=0.9), synth_root, out,
        device="cpu", progress=False, log=None)
    fit(tiny("deeplabv3_small", epochs=2, scheduler="poly", poly_power=2.0), synth_root, out,
        device="cpu", resume=True, progress=False, log=lines.append)
    resumed = lr_at_start[2]
    assert any("power changed from 0.9 to 2" in line for line in lines), lines
    lr_at_start.clear()
    fit(tiny("deeplabv3_small", epochs=2, scheduler="poly", poly_power=2.0), synth_root,
        tmp_path / "fresh", device="cpu", progress=False, log=None)
    assert resumed == pytest.approx(lr_at_start[2], rel=1e-9)
    base = tiny("deeplabv3_small").lr
    assert resumed == pytest.approx(base * (1 - 3 / 6) ** 2.0, rel=1e-9)  # 3 steps/epoch, 6 in all


def test_retarget_leaves_plateau_alone():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    plateau, when = loop.build_scheduler(tiny(scheduler="plateau"), opt, 10)
    assert when == "epoch" and loop.retarget_scheduler(plateau, 20) is None
    assert opt.param_groups[0]["lr"] == 0.1
