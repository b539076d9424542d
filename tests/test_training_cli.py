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
