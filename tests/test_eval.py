"""eval / predict / eval --pred-dir: the contract keys, and values equal to an independent count."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import jaccard_score

from cityseg_deploy import runtime
from cityseg_deploy.cli import run
from cityseg_deploy.data import CityscapesDataset
from cityseg_deploy.fileio import read_label, read_rgb
from test_runtime_artifacts import arts  # noqa: F401

KEYS = {"model", "num_classes", "classes", "per_pixel", "jaccard", "per_class_iou", "miou", "confusion"}


@pytest.fixture(scope="module")
def eval_doc(arts, synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "e.json"
    assert run(["eval", str(arts["onnx"]), "--data", str(synth_root), "--json", str(out),
                "--threads", "1", "--no-progress"]) == 0
    return json.loads(out.read_text())


def test_eval_json_equals_sklearn(arts, synth_root, eval_doc):
    assert KEYS <= set(eval_doc)
    assert set(eval_doc["jaccard"]) == {"micro", "macro", "weighted"}
    seg = runtime.load(arts["onnx"], threads=1)
    ds = CityscapesDataset(synth_root, "val")
    truth, pred = [], []
    for image, label in ds:
        truth.append(label.ravel())
        pred.append(seg.predict(image).ravel())
    t, p = np.concatenate(truth), np.concatenate(pred)
    valid = t != 255
    t, p = t[valid], p[valid]
    assert eval_doc["per_pixel"] == pytest.approx(float((t == p).mean()), abs=1e-12)
    for avg in ("micro", "macro", "weighted"):
        assert eval_doc["jaccard"][avg] == pytest.approx(jaccard_score(t, p, average=avg), abs=1e-9)
    per_class = jaccard_score(t, p, average=None, labels=list(range(19)), zero_division=0)
    present = set(np.unique(t)) | set(np.unique(p))
    for k, (name, ref) in enumerate(zip(eval_doc["classes"], per_class)):
        got = eval_doc["per_class_iou"][name]
        assert got is None if k not in present else got == pytest.approx(ref, abs=1e-9)
    assert eval_doc["miou"] == pytest.approx(eval_doc["jaccard"]["macro"], abs=1e-12)
    assert sum(map(sum, eval_doc["confusion"])) == valid.sum()


@pytest.mark.parametrize("fmt", ["labelIds", "trainIds"])
def test_pred_dir_of_predict_equals_eval(arts, synth_root, eval_doc, tmp_path, capsys, fmt):
    out = tmp_path / "preds"
    assert run(["predict", str(arts["onnx"]), "--data", str(synth_root), "--out", str(out),
                "--format", fmt, "--threads", "1", "--no-progress"]) == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == 4 and all(f.name.endswith("_leftImg8bit.png") for f in files)
    js = tmp_path / "p.json"
    assert run(["eval", "--pred-dir", str(out), "--data", str(synth_root), "--pred-format", fmt,
                "--json", str(js), "--no-progress"]) == 0
    doc = json.loads(js.read_text())
    assert doc["confusion"] == eval_doc["confusion"]
    assert doc["miou"] == eval_doc["miou"]
    if fmt == "labelIds":  # official ids: road is 7, sky 23 ...
        assert set(np.unique(read_label(files[0]))) <= {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23,
                                                        24, 25, 26, 27, 28, 31, 32, 33}


def test_pred_dir_missing_predictions_named(arts, synth_root, tmp_path, capsys):
    out = tmp_path / "preds"
    assert run(["predict", str(arts["onnx"]), "--data", str(synth_root), "--out", str(out),
                "--threads", "1", "--no-progress"]) == 0
    victim = sorted(out.glob("*.png"))[0]
    victim.unlink()
    capsys.readouterr()
    assert run(["eval", "--pred-dir", str(out), "--data", str(synth_root), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and victim.name.replace("_leftImg8bit.png", "") in err


@pytest.mark.parametrize("fmt", ["color", "overlay"])
def test_predict_color_formats(arts, synth_root, tmp_path, fmt):
    out = tmp_path / fmt
    assert run(["predict", str(arts["ckpt"]), "--data", str(synth_root), "--out", str(out),
                "--format", fmt, "--threads", "1", "--no-progress"]) == 0
    image = read_rgb(sorted(out.glob("*.png"))[0])
    assert image.shape == (64, 128, 3)


def test_eval_needs_model_or_pred_dir(synth_root, capsys):
    assert run(["eval", "--data", str(synth_root)]) == 2
    assert "MODEL or --pred-dir" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["trainIds", "color"])
def test_predict_hint_is_a_command_that_works_for_that_format(arts, synth_root, tmp_path, capsys, fmt):
    # color PNGs cannot be scored ("a label image must have one channel"): the hint must not say so.
    import shlex

    out = tmp_path / "preds"
    assert run(["predict", str(arts["onnx"]), "--data", str(synth_root), "--out", str(out),
                "--format", fmt, "--threads", "1", "--no-progress"]) == 0
    text = capsys.readouterr().out
    argv = shlex.split(text.split("'")[1])
    assert argv[0] == "cityseg"
    if fmt == "color":
        assert argv[1] == "predict" and "eval" not in argv
        assert run(argv[1:] + ["--threads", "1", "--no-progress"]) == 0
        argv = shlex.split(capsys.readouterr().out.split("'")[1])
    assert argv[1:3] == ["eval", "--pred-dir"]
    assert run(argv[1:] + ["--no-progress"]) == 0
    assert "| mIoU |" in capsys.readouterr().out
