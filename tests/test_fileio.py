"""Atomic writes keep the permission bits a plain ``open()`` would give (not mkstemp's 0600)."""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from cityseg_deploy import fileio
from cityseg_deploy.fileio import atomic_path, new_file_mode, write_text_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_file_mode_matches_open(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert new_file_mode() == _mode(plain)


def test_atomic_write_gets_open_mode_and_keeps_an_existing_mode(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    out = tmp_path / "result.json"
    write_text_atomic(out, "{}")
    assert _mode(out) == _mode(plain)  # was 0600 from mkstemp
    os.chmod(out, 0o640)
    write_text_atomic(out, "{\"a\": 1}")
    assert _mode(out) == 0o640 and out.read_text() == "{\"a\": 1}"


def test_atomic_dir_and_replaced_file(tmp_path):
    folder = tmp_path / "model_openvino_model"
    with atomic_path(folder, is_dir=True) as tmp:
        (tmp / "a.xml").write_text("<x/>")
    assert (folder / "a.xml").is_file()
    # A block that replaces the temporary with another file (as the AOTI export does) still works.
    target = tmp_path / "m.pt2"
    with atomic_path(target) as tmp:
        other = tmp.with_suffix(".pt2")
        other.write_bytes(b"pkg")
        other.replace(tmp)
    assert target.read_bytes() == b"pkg" and _mode(target) == new_file_mode()


# --------------------------------------------------------------------------- file + sidecar pairs
def _write_pair(folder: Path, tag: str) -> tuple[Path, Path]:
    from cityseg_deploy.fileio import atomic_pair

    main, side = folder / "m.pt2", folder / "m.pt2.json"
    with atomic_pair(main, side) as (tmp_main, tmp_side):
        tmp_main.write_bytes(f"{tag} package".encode())
        tmp_side.write_text(f"{tag} sidecar")
    return main, side


def _state(folder: Path) -> tuple[str | None, str | None]:
    main, side = folder / "m.pt2", folder / "m.pt2.json"
    return (main.read_bytes().decode().split()[0] if main.exists() else None,
            side.read_text().split()[0] if side.exists() else None)


def _killed_at(step: int, folder: Path) -> bool:
    """Run the new pair's write in a forked child that SIGKILLs itself at its ``step``-th file
    operation (rename or delete); False when the write finished in fewer steps."""
    import signal

    pid = os.fork()
    if pid == 0:  # the child: no cleanup handler runs after a SIGKILL, as in the real thing
        try:
            count = [0]
            real_replace, real_unlink = os.replace, Path.unlink

            def tick():
                count[0] += 1
                if count[0] == step:
                    os.kill(os.getpid(), signal.SIGKILL)

            os.replace = lambda *a, **k: (tick(), real_replace(*a, **k))[1]
            Path.unlink = lambda self, *a, **k: (tick(), real_unlink(self, *a, **k))[1]
            _write_pair(folder, "new")
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status)


@pytest.mark.parametrize("previous", [True, False])
def test_pair_swap_killed_at_any_step_leaves_one_complete_pair(tmp_path, monkeypatch, previous):
    """Issue 27 item 11: a SIGKILL while an export renames its package and sidecar into place used
    to leave the new .pt2 without a sidecar and the previous pair gone.  Killed at every rename and
    delete of the swap, then read back (recover_pair, as artifact_kind does): old pair or new."""
    from cityseg_deploy.artifacts import artifact_kind
    from cityseg_deploy.fileio import aside_path

    steps = 0
    for step in range(1, 40):
        folder = tmp_path / f"step{step}"
        folder.mkdir()
        if previous:
            _write_pair(folder, "old")
        if not _killed_at(step, folder):
            assert _state(folder) == ("new", "new")
            break
        steps += 1
        if (folder / "m.pt2").exists() or aside_path(folder / "m.pt2").exists():
            assert artifact_kind(folder / "m.pt2") == "aoti"  # the reader's recovery
        state = _state(folder)
        if previous:
            assert state in (("old", "old"), ("new", "new")), (step, state)
        else:  # a first export: never a package without its sidecar
            assert state in ((None, None), (None, "new"), ("new", "new")), (step, state)
        assert not aside_path(folder / "m.pt2").exists() and not aside_path(folder / "m.pt2.json").exists()
        monkeypatch.setattr(fileio, "RUN_STARTED", time.time() + 1)  # a later run: stale temporaries go
        _write_pair(folder, "next")  # the next export over whatever the kill left
        assert _state(folder) == ("next", "next")
        assert sorted(p.name for p in folder.iterdir()) == ["m.pt2", "m.pt2.json"], step
    assert steps >= (6 if previous else 3)  # every rename of the swap was cut at least once


def test_pair_swap_interrupted_puts_the_old_pair_back(tmp_path, monkeypatch):
    from cityseg_deploy.fileio import atomic_pair

    _write_pair(tmp_path, "old")
    real, cut = os.replace, []

    def replace(src, dst, *a, **k):
        if str(dst).endswith("m.pt2") and not cut:
            cut.append(dst)
            raise KeyboardInterrupt  # the new sidecar is in place, the package not yet
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with atomic_pair(tmp_path / "m.pt2", tmp_path / "m.pt2.json") as (a, b):
            a.write_bytes(b"new package")
            b.write_text("new sidecar")
    assert cut and _state(tmp_path) == ("old", "old")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2", "m.pt2.json"]
