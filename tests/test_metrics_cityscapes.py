"""Class and category IoU equal cityscapesscripts' official pixel-level evaluation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cityseg_deploy.data.synth import synth_scene
from cityseg_deploy.fileio import write_png
from cityseg_deploy.labels import CITYSCAPES19
from cityseg_deploy.metrics import ConfusionMatrix

official = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")


def _official(pred_files: list[str], gt_files: list[str]) -> dict:
    args = official.args
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.quiet = True
    args.JSONOutput = False
    args.colorized = False
    args.bold = args.nocol = ""
    return official.evaluateImgLists(pred_files, gt_files, args)


def test_equals_official_evaluation(tmp_path):
    rng = np.random.default_rng(0)
    to_train, to_id = CITYSCAPES19.id_lut(), CITYSCAPES19.to_label_id_lut()
    cm = ConfusionMatrix(19)
    preds, gts = [], []
    for k in range(3):
        _, gt_ids = synth_scene((48, 96), seed=k)
        gt = to_train[gt_ids]
        pred = np.where(gt == 255, rng.integers(0, 19, gt.shape), gt).astype(np.uint8)
        noise = rng.random(gt.shape) < 0.2
        pred[noise] = rng.integers(0, 19, noise.sum())
        pred[:, :8] = 13  # a systematic error: cars predicted on the left edge
        cm.update(pred, gt)
        gts.append(str(tmp_path / f"gt{k}_gtFine_labelIds.png"))
        preds.append(str(tmp_path / f"pred{k}.png"))
        write_png(gts[-1], gt_ids)
        write_png(preds[-1], to_id[pred])
    ours = cm.compute()
    ref = _official(preds, gts)
    for name, value in ours["per_class_iou"].items():
        expected = ref["classScores"][name]
        if value is None:
            assert math.isnan(expected), name
        else:
            assert value == pytest.approx(expected, abs=1e-12), name
    for category, value in ours["category_iou"].items():
        expected = ref["categoryScores"][category]
        assert (value is None and math.isnan(expected)) or value == pytest.approx(expected, abs=1e-12)
    assert ours["miou"] == pytest.approx(np.nanmean([ref["classScores"][n]
                                                     for n in ours["per_class_iou"]]), abs=1e-12)
