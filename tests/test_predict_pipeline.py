"""``predict`` with decoding ahead and a PNG writer pool: the same files as the serial loop, the
first write error as one error line with no temporaries left, and a speed figure.

The truth is computed here, serially, with the same runner: ``runtime.load`` +
``Segmenter.run`` on each batch + ``render`` — no thread, no pool.
"""
from __future__ import annotations

import errno
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from cityseg_deploy import fileio, runtime
from cityseg_deploy.cli import run
from cityseg_deploy.data.cityscapes import find_samples, load_sample
from cityseg_deploy.data.synth import synthesize
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.evaluation.predict import output_label_set, predict_images, predict_split, render
from cityseg_deploy.fileio import read_label, read_rgb
from cityseg_deploy.labels import get_label_set
from cityseg_deploy.metrics import ConfusionMatrix
from support import error_line, random_checkpoint

N_VAL = 11  # not a multiple of the batch sizes below: a short last batch


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("pp") / "data", n_train=1, n_val=N_VAL, size=(64, 128), seed=3)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("pp_ck") / "m.pt", "deeplabv3_small")


def _val(root: Path) -> list[Path]:
    return sorted((root / "leftImg8bit" / "val").glob("*/*.png"))


def _serial(ckpt: Path, images: list[Path], fmt: str, batch: int) -> list[np.ndarray]:
    """What each image's PNG must hold: the runner on the same batches, rendered, in order."""
    seg = runtime.load(ckpt, threads=1)
    label_set = output_label_set(seg.meta, fmt, where="test")
    frames = [read_rgb(p) for p in images]
    out = []
    for k in range(0, len(frames), batch):
        preds, _, _ = seg.run(frames[k:k + batch])
        out += [render(p, f, label_set, fmt)[0] for p, f in zip(preds, frames[k:k + batch])]
    return out


def _read(path: Path, fmt: str) -> np.ndarray:
    return read_rgb(path) if fmt in ("color", "overlay") else read_label(path)


def _no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.rglob(".*")], sorted(folder.rglob(".*"))


@pytest.mark.parametrize("fmt,batch,workers", [("trainIds", 1, 2), ("labelIds", 3, 1),
                                               ("overlay", 2, 3), ("color", 1, 0)])
def test_images_equal_the_serial_loop(ckpt, root, tmp_path, fmt, batch, workers):
    out = tmp_path / "out"
    res = predict_images(ckpt, str(root / "leftImg8bit" / "val" / "*" / "*.png"), out, fmt=fmt,
                         threads=1, batch=batch, progress=False, png_workers=workers)
    images = _val(root)
    truth = _serial(ckpt, images, fmt, batch)
    assert res["written"] == len(images) == N_VAL
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}.png" for p in images)
    for image, expected in zip(images, truth):
        np.testing.assert_array_equal(_read(out / f"{image.stem}.png", fmt), expected)
    assert res["seconds"] > 0 and res["images_per_s"] == pytest.approx(N_VAL / res["seconds"])


@pytest.mark.parametrize("layout,batch", [("flat", 2), ("cities", 1)])
def test_split_equals_the_serial_loop_and_scores_the_same(ckpt, root, tmp_path, layout, batch):
    out = tmp_path / "out"
    res = predict_split(ckpt, root, out, fmt="trainIds", threads=1, batch=batch, progress=False,
                        layout=layout, png_workers=2)
    samples = find_samples(root, "val")
    truth = _serial(ckpt, [s.image for s in samples], "trainIds", batch)
    cm = ConfusionMatrix(19)
    for sample, expected in zip(samples, truth):
        folder = out / sample.city if layout == "cities" else out
        np.testing.assert_array_equal(read_label(folder / f"{sample.stem}_leftImg8bit.png"), expected)
        cm.update(expected, load_sample(sample, get_label_set("cityscapes19"))[1])
    assert res["written"] == len(samples)
    assert res["metrics"]["confusion"] == cm.compute()["confusion"]
    assert res["metrics"]["miou"] == cm.compute()["miou"]
    assert res["seconds"] > 0 and res["images_per_s"] > 0
    _no_temporaries(out)


def _fail_the_nth_write(monkeypatch, n: int) -> dict:
    """The n-th PNG goes half to disk, then the disk fails (EIO), through the real atomic_path."""
    calls = {"n": 0}
    lock = threading.Lock()

    def write_bytes_atomic(path, data, **options):
        with lock:
            calls["n"] += 1
            mine = calls["n"]
        with fileio.atomic_path(path, **options) as tmp:
            if mine == n:
                tmp.write_bytes(data[: len(data) // 2])
                raise OSError(errno.EIO, "Input/output error", str(tmp))
            tmp.write_bytes(data)

    monkeypatch.setattr(fileio, "write_bytes_atomic", write_bytes_atomic)
    return calls


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_a_failed_write_raises_and_leaves_no_temporary(ckpt, root, tmp_path, monkeypatch, workers):
    _fail_the_nth_write(monkeypatch, 3)
    out = tmp_path / "out"
    with pytest.raises(CitysegError, match="Input/output error"):
        predict_images(ckpt, str(root / "leftImg8bit" / "val" / "*" / "*.png"), out, fmt="trainIds",
                       threads=1, progress=False, png_workers=workers)
    _no_temporaries(out)
    written = sorted(out.iterdir())
    assert 2 <= len(written) < N_VAL  # stopped after the failure (what was in flight finished)
    for png in written:
        assert read_label(png).shape == (64, 128)  # complete files only


def test_a_failed_write_is_one_error_line(ckpt, root, tmp_path, monkeypatch, capsys):
    _fail_the_nth_write(monkeypatch, 3)
    out = tmp_path / "out"
    assert run(["predict", str(ckpt), "--data", str(root), "--out", str(out), "--threads", "1",
                "--no-progress"]) == 2
    assert "Input/output error" in error_line(capsys)
    _no_temporaries(out)


def test_cli_prints_the_speed_and_writes_json(ckpt, root, tmp_path, capsys):
    out, js = tmp_path / "out", tmp_path / "r.json"
    assert run(["predict", str(ckpt), "--images", str(root / "leftImg8bit" / "val" / "*" / "*.png"),
                "--out", str(out), "--format", "trainIds", "--threads", "1", "--no-progress",
                "--json", str(js)]) == 0
    lines = capsys.readouterr().out.splitlines()
    doc = json.loads(js.read_text())
    assert lines[-2] == (f"wrote {N_VAL} trainIds PNGs to {out} in {doc['seconds']:.2f} s "
                         f"({doc['images_per_s']:.1f} img/s)")
    assert lines[-1] == f"wrote {js}"
    assert doc["written"] == N_VAL and doc["format"] == "trainIds" and doc["out"] == str(out)
    assert doc["seconds"] > 0 and doc["images_per_s"] > 0 and doc["runner"] == lines[0][len("runner: "):]

    assert run(["predict", str(ckpt), "--data", str(root), "--out", str(tmp_path / "o2"), "--threads",
                "1", "--no-progress", "--json", str(js)]) == 0
    wrote = capsys.readouterr().out.splitlines()[-2]
    doc = json.loads(js.read_text())
    assert wrote.startswith(f"wrote {N_VAL} labelIds PNGs to {tmp_path / 'o2'} in {doc['seconds']:.2f} s "
                            f"({doc['images_per_s']:.1f} img/s; mIoU on the way: "
                            f"{100 * doc['metrics']['miou']:.2f}); score them with 'cityseg eval")


def test_stale_temporaries_of_earlier_runs_are_cleaned_once(ckpt, root, tmp_path):
    """Writes skip the per-file folder scan; the run cleans its targets' leftovers up front
    (and nothing else)."""
    import os

    out = tmp_path / "out"
    out.mkdir()
    stem = _val(root)[0].stem
    stale = out / f".{stem}.png.abcd1234.tmp"
    other = out / ".notes.txt.abcd1234.tmp"  # another file's temporary: not ours to remove
    for p in (stale, other):
        p.write_bytes(b"half")
        os.utime(p, (fileio.RUN_STARTED - 60, fileio.RUN_STARTED - 60))
    predict_images(ckpt, str(root / "leftImg8bit" / "val" / "*" / "*.png"), out, fmt="trainIds",
                   threads=1, progress=False)
    assert not stale.exists() and other.exists()


@pytest.mark.parametrize("command,option", [("predict", "--json"), ("eval", "--json"),
                                            ("bench", "--json"), ("bench", "--md"), ("bench", "--plot")])
@pytest.mark.parametrize("where", ["folder", "under a file"])
def test_a_report_path_that_cannot_be_written_is_refused_before_any_work(ckpt, root, tmp_path, capsys,
                                                                         command, option, where):
    """A folder, or a path under a file, failed only at the final write — a traceback after the
    whole run; it is now one error line before the model is even loaded."""
    (tmp_path / "a_file").write_text("x")
    dest = tmp_path if where == "folder" else tmp_path / "a_file" / "report.out"
    out = tmp_path / "pngs"
    args = {"predict": ["predict", str(ckpt), "--data", str(root), "--out", str(out)],
            "eval": ["eval", str(ckpt), "--data", str(root)],
            "bench": ["bench", str(ckpt), "--iters", "1"]}[command]
    assert run(args + [option, str(dest), "--no-progress"]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {option} {dest}: ")
    assert ("an existing folder" if where == "folder" else "is a file, not a folder") in line
    assert not out.exists()  # refused before any work
