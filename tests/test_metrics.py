"""The confusion-matrix metrics equal sklearn's jaccard_score and obey the metric contract."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import jaccard_score

from cityseg_deploy.errors import CitysegError
from cityseg_deploy.metrics import ConfusionMatrix
from cityseg_deploy.metrics.plots import plot_class_iou, plot_confusion
from cityseg_deploy.metrics.tables import (eval_json, table1_csv, table1_markdown, table2_csv,
                                           table2_markdown, write_eval_json)

TOL = 1e-12


def _sklearn(target: np.ndarray, pred: np.ndarray, n: int) -> dict:
    valid = target != 255
    t, p = target[valid].ravel(), pred[valid].ravel()
    out = {a: jaccard_score(t, p, average=a) for a in ("micro", "macro", "weighted")}
    labels = np.union1d(t, p)
    per = jaccard_score(t, p, average=None, labels=labels)
    out["per_class"] = {int(c): float(v) for c, v in zip(labels, per)}
    out["accuracy"] = float((t == p).mean())
    return out


def _assert_equal_to_sklearn(target: np.ndarray, pred: np.ndarray, n: int) -> dict:
    cm = ConfusionMatrix(n)
    for k in range(target.shape[0]):  # streamed, one "image" at a time
        cm.update(pred[k], target[k])
    result = cm.compute()
    ref = _sklearn(target, pred, n)
    for average in ("micro", "macro", "weighted"):
        assert abs(result["jaccard"][average] - ref[average]) <= TOL, average
    names = result["classes"]
    for c in range(n):
        iou = result["per_class_iou"][names[c]]
        if c in ref["per_class"]:
            assert abs(iou - ref["per_class"][c]) <= TOL
        else:
            assert iou is None
    assert abs(result["per_pixel"] - ref["accuracy"]) <= TOL
    assert abs(result["miou"] - result["jaccard"]["macro"]) <= TOL
    return result


def test_random_maps_with_ignore():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 19, (4, 40, 60)).astype(np.uint8)
    target[rng.random(target.shape) < 0.2] = 255
    pred = rng.integers(0, 19, (4, 40, 60)).astype(np.uint8)
    _assert_equal_to_sklearn(target, pred, 19)


def test_structured_maps_mostly_right():
    rng = np.random.default_rng(1)
    target = np.repeat(np.arange(10, dtype=np.uint8), 30).reshape(1, 10, 30).repeat(3, 0)
    pred = target.copy()
    flip = rng.random(pred.shape) < 0.15
    pred[flip] = rng.integers(0, 10, flip.sum())
    _assert_equal_to_sklearn(target, pred, 10)


def test_absent_classes_are_null_and_excluded():
    target = np.array([[[0, 0, 1, 1, 255, 255]]], np.uint8)
    pred = np.array([[[0, 1, 1, 1, 4, 2]]], np.uint8)  # 2 and 4 only where truth is ignored
    result = _assert_equal_to_sklearn(target, pred, 19)
    iou = list(result["per_class_iou"].values())
    assert iou[0] == 0.5 and iou[1] == pytest.approx(2 / 3)
    assert all(v is None for v in iou[2:])
    assert result["confusion"][0][1] == 1 and sum(map(sum, result["confusion"])) == 4


def test_class_only_in_prediction_counts():
    target = np.zeros((1, 4, 4), np.uint8)
    pred = target.copy()
    pred[0, 0, 0] = 3
    result = _assert_equal_to_sklearn(target, pred, 10)
    assert result["per_class_iou"]["object"] == 0.0


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12).flatmap(lambda n: st.tuples(
    st.just(n),
    arrays(np.uint8, (2, 5, 7), elements=st.sampled_from(list(range(n)) + [255])),
    arrays(np.uint8, (2, 5, 7), elements=st.integers(0, n - 1)))))
def test_property_equals_sklearn(case):
    n, target, pred = case
    if (target == 255).all():
        target[0, 0, 0] = 0
    _assert_equal_to_sklearn(target, pred, n)


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, (6, 8), elements=st.integers(0, 5)),
       arrays(np.uint8, (6, 8), elements=st.integers(0, 5)))
def test_property_invariants(target, pred):
    """Order of images does not matter; perfect prediction scores 1; values lie in [0, 1]."""
    a, b = ConfusionMatrix(6), ConfusionMatrix(6)
    a.update(pred, target)
    a.update(target, target)
    b.update(target, target)
    b.update(pred, target)
    assert torch.equal(a.matrix, b.matrix)
    r = a.compute()
    assert 0 <= r["per_pixel"] <= 1 and 0 <= r["miou"] <= 1
    perfect = ConfusionMatrix(6)
    perfect.update(target, target)
    p = perfect.compute()
    assert p["per_pixel"] == 1 and p["miou"] == 1 and p["jaccard"]["weighted"] == 1


def test_torch_input_stays_on_its_device_and_merges():
    rng = np.random.default_rng(2)
    t = torch.from_numpy(rng.integers(0, 5, (3, 8, 8)).astype(np.int64))
    p = torch.from_numpy(rng.integers(0, 5, (3, 8, 8)).astype(np.int64))
    whole = ConfusionMatrix(5)
    whole.update(p, t)
    assert whole.matrix.device == p.device and whole.matrix.dtype == torch.int64
    halves = ConfusionMatrix(5)
    halves.update(p[:1], t[:1])
    other = ConfusionMatrix(5)
    other.update(p[1:], t[1:])
    halves.merge(other).reduce_from_all_processes()  # not distributed: a no-op
    assert torch.equal(whole.matrix, halves.matrix)


def test_bad_inputs_are_user_errors():
    cm = ConfusionMatrix(5)
    with pytest.raises(CitysegError, match="outside"):
        cm.update(np.full((2, 2), 7, np.uint8), np.zeros((2, 2), np.uint8))
    with pytest.raises(CitysegError, match="ground truth holds class 9"):
        cm.update(np.zeros((2, 2), np.uint8), np.full((2, 2), 9, np.uint8))
    with pytest.raises(CitysegError, match="pixels"):
        cm.update(np.zeros((2, 3), np.uint8), np.zeros((2, 2), np.uint8))


def _results() -> dict[str, dict]:
    rng = np.random.default_rng(3)
    out = {}
    target = rng.integers(0, 19, (32, 32)).astype(np.uint8)
    for name, noise in (("deeplabv3", 0.1), ("unet", 0.4)):
        pred = target.copy()
        flip = rng.random(pred.shape) < noise
        pred[flip] = rng.integers(0, 19, flip.sum())
        cm = ConfusionMatrix(19)
        cm.update(pred, target)
        out[name] = cm.compute()
    return out


def test_tables_and_json(tmp_path):
    results = _results()
    md2 = table2_markdown(results)
    assert md2.splitlines()[0] == "| metric (%) | deeplabv3 | unet |"
    assert "| mIoU |" in md2 and f"{100 * results['unet']['miou']:.2f}" in md2
    csv2 = table2_csv(results).splitlines()
    assert csv2[0] == "metric,deeplabv3,unet" and len(csv2) == 6
    assert float(csv2[1].split(",")[1]) == results["deeplabv3"]["per_pixel"]
    md1 = table1_markdown(results)
    assert "road" in md1.splitlines()[0] and len(md1.splitlines()) == 4
    assert table1_csv(results).splitlines()[1].startswith("deeplabv3,")
    doc = eval_json(results["unet"], "unet.pt")
    assert list(doc)[:9] == ["model", "num_classes", "classes", "per_pixel", "jaccard",
                             "per_class_iou", "miou", "category_iou", "confusion"]
    write_eval_json(tmp_path / "eval.json", results["unet"], "unet.pt")
    loaded = json.loads((tmp_path / "eval.json").read_text())
    assert loaded["num_classes"] == 19 and len(loaded["confusion"]) == 19
    assert set(loaded["category_iou"]) == {"flat", "construction", "object", "nature", "sky",
                                           "human", "vehicle"}


def test_plots_written_atomically(tmp_path):
    results = _results()
    bars = plot_class_iou(results, tmp_path / "iou.png")
    heat = plot_confusion(results["unet"]["confusion"], results["unet"]["classes"],
                          tmp_path / "confusion.png")
    for path in (bars, heat):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "iou.png"]
