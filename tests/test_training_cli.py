"""`cityseg train` through cli.run: a tiny run, and every bad input as one error line, exit 2."""
from __future__ import annotations

import pytest
import yaml

from cityseg_deploy.cli import run

TINY = {"model": "unet_small", "epochs": 1, "batch_size": 2, "lr": 3e-3, "train_size": [32, 64],
        "val_size": [32, 64], "augment": {"scale": [1.0, 1.0]}}


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def _args(recipe, data, out, *extra):
    return ["train", "--recipe", str(recipe), "--data", str(data), "--out", str(out), "--no-progress",
            "--device", "cpu", *extra]


def test_train_cli_runs_and_resumes_longer(recipe_file, synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(_args(recipe_file, synth_root, out, "--set", "augment.hflip=0", "--lr", "0.002")) == 0
    text = capsys.readouterr().out
    assert "best val mIoU" in text and "next: cityseg eval" in text
    assert run(_args(recipe_file, synth_root, out, "--resume", "--epochs", "2")) == 0
    assert "epoch 2/2" in capsys.readouterr().out


@pytest.mark.parametrize("change,expected", [
    ({"learning_rate": 0.1}, "'learning_rate': unknown"),
    ({"epochs": "many"}, "'epochs': expected int"),
    ({"optimizer": "rmsprop"}, "'optimizer'"),
])
def test_bad_recipe_is_one_error_line(tmp_path, synth_root, capsys, change, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY, **change}))
    assert run(_args(path, synth_root, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]
    assert not (tmp_path / "out").exists()


def test_bad_inputs_exit_2(recipe_file, synth_root, tmp_path, capsys):
    cases = [
        (_args(recipe_file, tmp_path / "nowhere", tmp_path / "o1"), "no such dataset directory"),
        (_args("no_such_recipe", synth_root, tmp_path / "o2"), "no such file or recipe name"),
        (_args(recipe_file, synth_root, tmp_path / "o3", "--set", "lr"), "key=value"),
        (_args(recipe_file, synth_root, tmp_path / "o4")[:-2] + ["--device", "tpu9"], "--device"),
        (_args(recipe_file, synth_root, tmp_path / "o5", "--resume"), "nothing to resume"),
    ]
    for argv, expected in cases:
        assert run(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and "Traceback" not in err


def test_missing_split_and_resume_mismatch(recipe_file, synth_root, tmp_path, capsys):
    import shutil

    broken = tmp_path / "noval"
    shutil.copytree(synth_root, broken)
    shutil.rmtree(broken / "leftImg8bit" / "val")
    assert run(_args(recipe_file, broken, tmp_path / "o")) == 2
    assert "'val'" in capsys.readouterr().err

    out = tmp_path / "run"
    assert run(_args(recipe_file, synth_root, out)) == 0
    capsys.readouterr()
    assert run(_args(recipe_file, synth_root, out, "--resume", "--epochs", "2",
                     "--set", "label_set=cityscapes19")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot resume" in err and "label_set" in err


def test_cuda_device_without_gpu_is_a_clear_error(recipe_file, synth_root, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    assert run(_args(recipe_file, synth_root, tmp_path / "o")[:-2] + ["--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def _ctrl_c_in_epoch(monkeypatch, which: int):
    """Make train_one_epoch raise KeyboardInterrupt when it starts epoch ``which`` (1-based)."""
    from cityseg_deploy.training import loop

    real = loop.train_one_epoch

    def interrupted(*args, **kwargs):
        if args[5] == which:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", interrupted)
    return real


@pytest.mark.slow
def test_interrupted_run_already_has_report_and_curves(tmp_path, synth_root, monkeypatch, capsys):
    # README: report.md and curves.png are rewritten after every epoch, not only at the end.
    recipe = tmp_path / "three.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "epochs": 3}))
    out = tmp_path / "run"
    _ctrl_c_in_epoch(monkeypatch, 2)
    assert run(_args(recipe, synth_root, out)) == 130
    report = (out / "report.md").read_text()
    assert "epochs run: 1 of 3" in report and "Table 2" in report
    assert (out / "curves.png").stat().st_size > 1000
    assert not list(out.glob("*.tmp*"))


@pytest.mark.slow
def test_resume_alone_keeps_the_overrides_the_run_started_with(tmp_path, synth_root, monkeypatch,
                                                                capsys):
    recipe = tmp_path / "three.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "epochs": 3, "scheduler": "poly"}))
    out = tmp_path / "run"
    real = _ctrl_c_in_epoch(monkeypatch, 2)
    assert run(_args(recipe, synth_root, out, "--epochs", "2", "--lr", "0.002")) == 130
    err = capsys.readouterr().err
    hint = err.split("continue with: ")[1].split(" (the run")[0]
    assert hint == f"cityseg train --recipe {recipe} --data {synth_root} --out {out} --resume"
    monkeypatch.setattr("cityseg_deploy.training.loop.train_one_epoch", real)
    # The printed hint, as written (plus this test's quiet/cpu flags), continues the 2-epoch run.
    assert run(hint.split()[1:] + ["--no-progress", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "epoch 2/2" in text and "epoch 3" not in text and "extended" not in text
    assert "resume:" not in text
    from cityseg_deploy.models.checkpoint import read_checkpoint
    extra = read_checkpoint(out / "last.pt")["meta"]["extra"]
    assert extra["overrides"] == {"epochs": 2, "lr": 0.002} and extra["recipe"]["lr"] == 0.002
    # A changed override on resume is said, and then kept.
    assert run(_args(recipe, synth_root, out, "--resume", "--epochs", "3")) == 0
    text = capsys.readouterr().out
    assert "resume: epochs changed on resume: 2 -> 3" in text and "epoch 3/3" in text


def test_merge_resume_overrides_notes_only_changes():
    from cityseg_deploy.training.recipe import merge_resume_overrides

    merged, notes = merge_resume_overrides({"epochs": 4, "augment.hflip": 0}, {"epochs": 4})
    assert merged == {"epochs": 4, "augment.hflip": 0} and notes == []
    merged, notes = merge_resume_overrides({"epochs": 4}, {"epochs": 6, "lr": 0.1})
    assert merged == {"epochs": 6, "lr": 0.1}
    assert notes == ["epochs changed on resume: 4 -> 6",
                     "lr=0.1 added on resume (the run was started without it)"]
    assert merge_resume_overrides(None, {}) == ({}, [])
