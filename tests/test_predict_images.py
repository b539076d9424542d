"""``predict --images``: any folder, glob or list of frames → OUT/<stem>.png, checked against
``runtime.load(...).predict`` on the same images (the independent truth), and its refusals."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from cityseg_deploy import runtime
from cityseg_deploy.cli import run
from cityseg_deploy.fileio import read_label, read_rgb
from test_runtime_artifacts import arts  # noqa: F401


@pytest.fixture(scope="module")
def frames(synth_root, tmp_path_factory) -> Path:
    """The val images as plain frames: three PNGs and one JPEG, no Cityscapes names or layout."""
    folder = tmp_path_factory.mktemp("frames") / "cam"
    folder.mkdir()
    val = sorted((synth_root / "leftImg8bit" / "val").rglob("*.png"))
    for k, image in enumerate(val[:3]):
        shutil.copy(image, folder / f"frame_{k:02d}.png")
    cv2.imwrite(str(folder / "frame_03.jpg"), cv2.imread(str(val[3])))
    (folder / "notes.md").write_text("not an image")
    return folder


def _truth(model, images: list[Path]) -> dict[str, np.ndarray]:
    seg = runtime.load(model, threads=1)
    return {f"{p.stem}.png": seg.predict(read_rgb(p)) for p in images}


@pytest.mark.parametrize("kind", ["folder", "glob", "list"])
def test_images_equal_runtime_predict(arts, frames, tmp_path, capsys, kind):
    if kind == "folder":
        spec, images = str(frames), sorted(p for p in frames.iterdir() if p.suffix != ".md")
    elif kind == "glob":
        spec, images = str(frames / "frame_0[12].*"), [frames / "frame_01.png", frames / "frame_02.png"]
    else:
        listing = tmp_path / "lists" / "few.txt"  # entries relative to the list's own folder
        listing.parent.mkdir()
        shutil.copytree(frames, tmp_path / "lists" / "cam")
        listing.write_text("# two frames\ncam/frame_03.jpg\n\ncam/frame_00.png\n")
        spec, images = str(listing), [tmp_path / "lists/cam/frame_03.jpg", tmp_path / "lists/cam/frame_00.png"]
    out = tmp_path / "out"
    assert run(["predict", str(arts["onnx"]), "--images", spec, "--out", str(out), "--format", "trainIds",
                "--threads", "1", "--no-progress", "--batch", "2"]) == 0
    assert f"wrote {len(images)} trainIds PNGs" in capsys.readouterr().out
    truth = _truth(arts["onnx"], images)
    assert sorted(p.name for p in out.iterdir()) == sorted(truth)
    for name, expected in truth.items():
        np.testing.assert_array_equal(read_label(out / name), expected)


def test_color_format_is_the_palette_of_the_prediction(arts, frames, tmp_path):
    from cityseg_deploy.labels import get_label_set

    out = tmp_path / "out"
    assert run(["predict", str(arts["onnx"]), "--images", str(frames / "*.jpg"), "--out", str(out),
                "--format", "color", "--threads", "1", "--no-progress"]) == 0
    pred = _truth(arts["onnx"], [frames / "frame_03.jpg"])["frame_03.png"]
    lut = np.asarray(get_label_set("cityscapes19").palette, np.uint8)
    np.testing.assert_array_equal(read_rgb(out / "frame_03.png"), lut[pred])


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_duplicate_stems_refused_up_front(arts, frames, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    shutil.copy(frames / "frame_00.png", tmp_path / "in" / "x.png")
    shutil.copy(frames / "frame_03.jpg", tmp_path / "in" / "x.jpg")
    out = tmp_path / "out"
    assert run(["predict", str(arts["onnx"]), "--images", str(tmp_path / "in"), "--out", str(out),
                "--no-progress"]) == 2
    assert "'x'" in _one_error(capsys) and not out.exists()


@pytest.mark.parametrize("both", [True, False])
def test_images_and_data_exclude_each_other(arts, frames, synth_root, tmp_path, capsys, both):
    extra = ["--images", str(frames), "--data", str(synth_root)] if both else []
    assert run(["predict", str(arts["onnx"]), *extra, "--out", str(tmp_path / "o")]) == 2
    assert "--data ROOT or --images" in _one_error(capsys) and not (tmp_path / "o").exists()


@pytest.mark.parametrize("bad", [b"", b"\x89PNG\r\n\x1a\nnot really", b"GIF89a garbage"])
def test_a_corrupt_image_is_exit_2_and_no_files(arts, frames, tmp_path, capsys, bad):
    folder = tmp_path / "in"
    shutil.copytree(frames, folder)
    (folder / ("zz_bad.png" if bad[:1] != b"G" else "zz_bad.jpg")).write_bytes(bad)
    out = tmp_path / "out"
    assert run(["predict", str(arts["onnx"]), "--images", str(folder), "--out", str(out),
                "--no-progress"]) == 2
    assert "zz_bad" in _one_error(capsys)
    assert not out.exists() or not any(out.iterdir())


def test_layout_cities_with_images_is_refused_not_ignored(arts, frames, tmp_path, capsys):
    out = tmp_path / "o"
    assert run(["predict", str(arts["onnx"]), "--images", str(frames), "--out", str(out),
                "--layout", "cities", "--no-progress"]) == 2
    assert "--layout cities needs --data" in _one_error(capsys) and not out.exists()
