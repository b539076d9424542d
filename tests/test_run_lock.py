"""Run-folder lock (train, export) and the epoch a Ctrl-C names (issue 27 item 15).

A second ``train --resume`` into a folder still training was accepted; now the second job is
refused with one line naming the holder.  The lock is the kernel's (flock): it dies with its
process, however that process ends (the SIGKILL test).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cityseg_deploy.errors import CitysegError
from cityseg_deploy.models import read_checkpoint
from cityseg_deploy.runlock import LOCK_NAME, folder_lock
from cityseg_deploy.training import TrainingInterrupted, fit, recipe_from_dict
from cityseg_deploy.training import loop

TINY = {"model": "unet_small", "epochs": 2, "batch_size": 2, "lr": 3e-3, "train_size": [32, 64],
        "val_size": [32, 64], "seed": 3}

_HOLD = ("import sys, time\n"
         "from cityseg_deploy.runlock import LOCK_NAME, folder_lock\n"
         "with folder_lock(sys.argv[1], what='test', name=(sys.argv[2:] or [LOCK_NAME])[0]):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(60)\n")


def _holder(folder, *name: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), *name], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held"
    return proc


def test_a_second_holder_is_refused_and_the_lock_dies_with_its_process(tmp_path):
    proc = _holder(tmp_path / "run")
    try:
        with pytest.raises(CitysegError, match=rf"another job is writing here.*pid {proc.pid}"):
            with folder_lock(tmp_path / "run", what="train"):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup code runs: the kernel drops the lock
        proc.wait()
    with folder_lock(tmp_path / "run", what="train"):  # stale record, free lock: taken
        pass


def test_train_resume_into_a_folder_still_training_is_one_error_line(synth_root, tmp_path):
    out = tmp_path / "run"
    fit(recipe_from_dict(TINY), synth_root, out, device="cpu", progress=False, log=None)
    before = (out / "last.pt").read_bytes()
    proc = _holder(out)  # stands for the first `train` still running there
    try:
        run = subprocess.run([sys.executable, "-m", "cityseg_deploy", "train", "--recipe",
                              "unet_small", "--data", str(synth_root), "--out", str(out),
                              "--resume", "--epochs", "3"], capture_output=True, timeout=300,
                             check=False)
    finally:
        proc.kill()
        proc.wait()
    err = run.stderr.decode()
    assert run.returncode == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "another job is writing here" in err and f"pid {proc.pid}" in err
    assert (out / "last.pt").read_bytes() == before


def test_a_fresh_run_is_not_refused_because_of_a_leftover_lock_file(synth_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text('{"pid": 999999, "host": "x"}')
    fit(recipe_from_dict({**TINY, "epochs": 1}), synth_root, out, device="cpu", progress=False,
        log=None)
    assert (out / "last.pt").is_file()


def test_export_to_a_target_being_written_is_refused(tmp_path):
    from support import random_checkpoint

    ckpt = random_checkpoint(tmp_path / "m.pt", "unet_small")
    target = tmp_path / "out" / "m.onnx"
    proc = _holder(target.parent, ".m.onnx.lock")
    try:
        run = subprocess.run([sys.executable, "-m", "cityseg_deploy", "export", str(ckpt),
                              "--format", "onnx", "--out", str(target)], capture_output=True,
                             timeout=300, check=False)
    finally:
        proc.kill()
        proc.wait()
    err = run.stderr.decode()
    assert run.returncode == 2 and "another job is writing here" in err and err.count("\n") == 1, err
    assert not target.exists()


@pytest.mark.parametrize("where", ["report", "best", "train2"])
def test_ctrl_c_names_the_epoch_last_pt_holds(synth_root, tmp_path, monkeypatch, where):
    """Ctrl-C while epoch 1's report is written (last.pt already holds epoch 1), while its
    best.pt is written (last.pt still holds epoch 0), or inside epoch 2's training."""
    real_files, real_epoch = loop.write_run_files, loop.train_one_epoch

    def files(*args, **kwargs):
        if where == "report":
            raise KeyboardInterrupt
        return real_files(*args, **kwargs)

    def save(path, *args, **kwargs):
        if where == "best" and path.name == "best.pt":
            raise KeyboardInterrupt
        return real_save(path, *args, **kwargs)

    def epoch(*args, **kwargs):
        if where == "train2" and args[5] == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    real_save = loop.save_checkpoint
    monkeypatch.setattr(loop, "write_run_files", files)
    monkeypatch.setattr(loop, "save_checkpoint", save)
    monkeypatch.setattr(loop, "train_one_epoch", epoch)
    with pytest.raises(TrainingInterrupted) as info:
        fit(recipe_from_dict(TINY), synth_root, tmp_path / "r", device="cpu", progress=False, log=None)
    held = read_checkpoint(tmp_path / "r" / "last.pt")["train_state"]["epoch"]
    assert held == {"report": 1, "best": 0, "train2": 1}[where]
    message = str(info.value)
    assert f"holds the state after epoch {held}" in message, message
    expected = {"report": "interrupted after epoch 1", "best": "interrupted while saving epoch 1",
                "train2": "interrupted in epoch 2"}[where]
    assert message.startswith(expected), message
