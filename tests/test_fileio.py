"""Atomic writes keep the permission bits a plain ``open()`` would give (not mkstemp's 0600)."""
from __future__ import annotations

import os
import stat

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
