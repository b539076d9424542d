"""``cityseg data synth`` / ``cityseg data check`` through the CLI entry point."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from cityseg_deploy.cli import run
from cityseg_deploy.data.check import check_dataset
from cityseg_deploy.fileio import write_png


def test_synth_then_check_clean(tmp_path, capsys):
    out = tmp_path / "ds"
    assert run(["data", "synth", str(out), "--train", "2", "--val", "1", "--size", "32x64",
                "--seed", "1"]) == 0
    assert len(list(out.rglob("*_leftImg8bit.png"))) == 3
    capsys.readouterr()
    assert run(["data", "check", str(out)]) == 0
    text = capsys.readouterr().out
    assert "train: 2 images, 2 labels, 2 pairs" in text and "64x32 (2)" in text
    assert "| road |" in text and "no problems found" in text


def test_check_missing_root_exit_2(tmp_path, capsys):
    assert run(["data", "check", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "missing" in err[0]


def test_check_empty_root_exit_2(tmp_path, capsys):
    (tmp_path / "empty" / "leftImg8bit" / "train").mkdir(parents=True)
    assert run(["data", "check", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_check_lists_every_problem_exit_1(synth_root, tmp_path, capsys):
    root = Path(shutil.copytree(synth_root, tmp_path / "bad"))
    labels = sorted((root / "gtFine" / "train").glob("*/*_labelIds.png"))
    images = sorted((root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))
    labels[0].unlink()                                             # image without label
    write_png(labels[1], np.zeros((10, 10), np.uint8))            # label of another size
    images[0].write_bytes(b"garbage")                             # corrupt PNG
    orphan = root / "gtFine" / "val" / "nocity" / "nocity_000001_000019_gtFine_labelIds.png"
    write_png(orphan, np.zeros((64, 128), np.uint8))              # label without image
    write_png(labels[2], np.full((64, 128), 200, np.uint8))       # unknown label id
    report = check_dataset(root)
    assert len(report.problems) == 5
    assert run(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    for needle in ("image without a label", labels[1].name, "corrupt", "label without an image",
                   "unknown id 200", "5 problem(s)"):
        assert needle in out, needle
