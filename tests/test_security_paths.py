"""List-file entries never make ``segment`` write outside ``--labels-dir``/``--out`` (issue 15, security 4).

An entry ``sub/..`` names its folder's parent: its output name is ``..``, and
``<labels-dir>/..`` is the folder above the one the user chose.  Such names are refused up front
(exit 2, one ``error:`` line, nothing written anywhere); entries that merely *read* from outside
(``../x``) still write inside.  A property test drives :func:`child_path` with generated names.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityseg_deploy.cli import run
from cityseg_deploy.cli import segment as segment_cli
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.fileio import child_path, write_png
from test_video_support import StandInSegmenter


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(segment_cli, "_load_segmenter", lambda *a, **k: StandInSegmenter())


def _image_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_png(folder / "f0.png", np.full((32, 48, 3), 90, np.uint8), rgb=True)
    return folder


def _all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("entry", ["sub/..", "imgs/../sub/..", "./imgs/.."])
def test_list_entry_escaping_the_output_folder_is_refused(tmp_path, stand_in, capsys, entry):
    work = tmp_path / "work"
    _image_folder(work / "imgs")
    _image_folder(work / "sub")
    _image_folder(work)  # "sub/.." is this folder: it holds images too
    (work / "list.txt").write_text(f"imgs\n{entry}\n")
    before = _all_files(tmp_path)
    code = run(["segment", str(work / "list.txt"), "--model", "m.pt",
                "--labels-dir", str(tmp_path / "out" / "labels"), "--out", str(tmp_path / "out" / "o.avi")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error: ") == 1 and "Traceback" not in err
    assert "would write outside" in err
    assert _all_files(tmp_path) == before  # nothing written, inside or outside


def test_entries_reading_from_outside_still_write_inside(tmp_path, stand_in, capsys):
    _image_folder(tmp_path / "elsewhere" / "cam")
    work = tmp_path / "work"
    _image_folder(work / "imgs")
    (work / "list.txt").write_text("imgs\n../elsewhere/cam\n")
    labels = tmp_path / "out" / "labels"
    assert run(["segment", str(work / "list.txt"), "--model", "m.pt", "--labels-dir", str(labels)]) == 0
    assert _all_files(tmp_path / "out") == {"labels/imgs/frame_000000.png", "labels/cam/frame_000000.png"}


@settings(max_examples=300, deadline=None)
@given(name=st.one_of(st.sampled_from(["..", ".", "", "../x", "a/../..", "/etc", "a/b", "~", "...", "a\x00b"]),
                      st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)))
def test_child_path_stays_inside_or_refuses(tmp_path_factory, name):
    root = tmp_path_factory.getbasetemp() / "root"
    try:
        child = child_path(root, name, what="gen")
    except CitysegError as exc:
        assert str(exc).startswith("gen: the output name")
        return
    assert Path(os.path.abspath(child)).parent == Path(os.path.abspath(root))
    assert child.name == name
