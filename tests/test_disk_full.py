"""A full or failing disk (ENOSPC, EIO, EDQUOT) ends in one ``error:`` line naming the path and
the free space, never a traceback; ``segment`` checks its video before calling it done and never
replaces a good file with a bad one (issue 27 items 7 and 8).

Real full disks come from a 3 MiB tmpfs (root may mount one; elsewhere those tests skip and say
why); the others raise ENOSPC/EIO by monkeypatching a write, so they run on every machine.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from cityseg_deploy import fileio
from cityseg_deploy.cli import run
from cityseg_deploy.cli import segment as segment_cli
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.video import writers
from support import random_checkpoint
from test_video_support import StandInSegmenter, video_info, write_clip


@pytest.fixture
def tiny_fs(tmp_path):
    """A 3 MiB tmpfs (unmounted afterwards); skipped where mounting is not permitted."""
    mount = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip() or proc.returncode}); "
                    "the monkeypatched ENOSPC tests below still run")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave: int) -> None:
    """Fill ``folder``'s filesystem until about ``leave`` bytes are free."""
    free = fileio.free_bytes(folder)
    with open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


def one_error(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.decode()
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert lines and lines[-1].startswith("error: ") and sum(ln.startswith("error") for ln in lines) == 1, err
    return lines[-1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cityseg_deploy", *args], capture_output=True,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("ck") / "m.pt", "deeplabv3_small")


# ------------------------------------------------------------------ real full disk (tmpfs)

@pytest.mark.parametrize("command", ["eval-json", "predict", "data-synth"])
def test_commands_on_a_full_disk_print_one_line_with_path_and_space(tiny_fs, synth_root, ckpt, command):
    fill(tiny_fs, 2000)
    target = {"eval-json": tiny_fs / "e.json", "predict": tiny_fs / "p",
              "data-synth": tiny_fs / "d"}[command]
    args = {"eval-json": ["eval", str(ckpt), "--data", str(synth_root), "--json", str(target)],
            "predict": ["predict", str(ckpt), "--data", str(synth_root), "--out", str(target)],
            "data-synth": ["data", "synth", str(target), "--train", "2", "--val", "1",
                           "--size", "64x128"]}[command]
    line = one_error(_cli(*args))
    assert str(target) in line and "MB free" in line and "No space left" in line, line
    leftovers = [p for p in tiny_fs.rglob("*") if p.is_file() and p.name != "filler"
                 and (p.name.startswith(".") or p.stat().st_size == 0)]
    assert leftovers == []  # no hidden temporary, no empty file under a final name


@pytest.mark.slow
@pytest.mark.parametrize("command", ["export", "train"])
def test_export_and_train_on_a_full_disk(tiny_fs, synth_root, ckpt, command):
    fill(tiny_fs, 20000)
    if command == "export":
        target = tiny_fs / "m.onnx"
        proc = _cli("export", str(ckpt), "--format", "onnx", "--out", str(target))
    else:
        target = tiny_fs / "run"
        proc = _cli("train", "--recipe", "deeplabv3_small", "--data", str(synth_root), "--out",
                    str(target), "--epochs", "1")
    line = one_error(proc)
    assert str(target) in line and "MB free" in line, line


@pytest.fixture
def stand_in(monkeypatch) -> StandInSegmenter:
    seg = StandInSegmenter()
    monkeypatch.setattr(segment_cli, "_load_segmenter", lambda *a, **k: seg)
    return seg


def test_segment_on_a_full_disk_keeps_the_good_video(tiny_fs, tmp_path, stand_in, capsys):
    clip = write_clip(tmp_path / "c.avi", n=60)
    out = tiny_fs / "v.avi"
    assert run(["segment", str(clip), "--model", "m.pt", "--out", str(out)]) == 0
    good = out.read_bytes()
    capsys.readouterr()
    fill(tiny_fs, 30000)
    code = run(["segment", str(clip), "--model", "m.pt", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and str(out) in err and "MB free" in err, err
    assert out.read_bytes() == good and video_info(out)[0] == 60
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["filler", "v.avi"]


def test_the_video_is_read_back_before_it_replaces_anything(tiny_fs, tmp_path, monkeypatch):
    """The free-space check per frame disabled: the encoder's writes fail silently, and only the
    read-back (frame count, last frame) stands between a bad file and the good one."""
    out = tiny_fs / "v.avi"
    frame = (np.random.default_rng(0).integers(0, 255, (240, 320, 3))).astype(np.uint8)
    sink = writers.VideoSink(out, 25.0)
    for _ in range(5):
        sink.write(frame)
    assert sink.close() == out and video_info(out)[0] == 5
    good = out.read_bytes()
    monkeypatch.setattr(writers, "free_bytes", lambda _p: 10**12)
    fill(tiny_fs, 30000)
    sink = writers.VideoSink(out, 25.0)
    for _ in range(60):
        sink.write(frame)
    with pytest.raises(CitysegError, match=r"of 60 frames.*previous file is kept"):
        sink.close()
    assert out.read_bytes() == good
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["filler", "v.avi"]


# ------------------------------------------------------------------ monkeypatched (any machine)

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EDQUOT])
@pytest.mark.parametrize("how", ["write_bytes_atomic", "atomic_path"])
def test_an_atomic_write_that_fails_on_the_disk_names_path_and_space(tmp_path, monkeypatch, code, how):
    def failing(where, data):
        raise OSError(code, os.strerror(code), str(where))

    target = tmp_path / "out.bin"
    with pytest.raises(CitysegError) as info:
        if how == "write_bytes_atomic":  # writes through the temporary's descriptor
            monkeypatch.setattr(fileio.os, "write", failing)
            fileio.write_bytes_atomic(target, b"x")
        else:
            monkeypatch.setattr(Path, "write_bytes", failing)
            with fileio.atomic_path(target) as tmp:
                tmp.write_bytes(b"x")
    monkeypatch.undo()
    message = str(info.value)
    assert message.startswith(f"{target}: cannot write ({os.strerror(code)})") and "MB free" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exc", [OSError(errno.EIO, os.strerror(errno.EIO), "/some/where/f.bin"),
                                 OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))])
def test_the_cli_edge_turns_a_storage_oserror_into_one_line(monkeypatch, capsys, exc):
    from cityseg_deploy.cli._app import app

    def broken(*_a, **_k):
        raise RuntimeError("write failed") from exc  # wrapped, as torch and onnx wrap it

    monkeypatch.setattr(app.commands["models"], "callback", broken)
    code = run(["models"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert f"cannot write ({os.strerror(exc.errno)})" in err and "MB free" in err
    assert (exc.filename or "current folder") in err


def test_other_oserrors_are_not_reported_as_a_full_disk():
    assert fileio.storage_error(OSError(errno.ENOENT, "No such file", "x")) is None
    assert fileio.storage_error(RuntimeError("unexpected pos 64 vs 0")) is None  # no path known


def test_aoti_export_without_room_is_refused_before_compiling(tmp_path, monkeypatch, ckpt, capsys):
    """The package writer would abort the process (exit 134, no handler runs) on a full disk."""
    from cityseg_deploy.export import aoti

    compiled = []
    monkeypatch.setattr(fileio, "free_bytes", lambda _p: 1_000_000)
    monkeypatch.setattr(aoti, "compile_package", lambda *a, **k: compiled.append(1))  # the child compile
    target = tmp_path / "m.pt2"
    code = run(["export", str(ckpt), "--format", "aoti", "--out", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and compiled == [] and not target.exists()
    assert err.startswith(f"error: {target}: cannot write") and "1.0 MB free" in err, err
