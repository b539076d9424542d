"""cityseg check: contract JSON, agreement, logit statistics, outputs and the mIoU gate."""
from __future__ import annotations

import json

import pytest

from cityseg_deploy.cli import run
from cityseg_deploy.evaluation import check
from test_runtime_artifacts import arts, make_checkpoint  # noqa: F401

DELTA = {"per_pixel", "micro", "macro", "weighted", "miou"}


def test_check_json_and_outputs(arts, synth_root, tmp_path, capsys):
    js, out = tmp_path / "c.json", tmp_path / "out"
    code = run(["check", str(arts["ckpt"]), str(arts["onnx"]), str(arts["ov_int8"]), "--data",
                str(synth_root), "--json", str(js), "--out", str(out), "--threads", "1",
                "--max-miou-drop", "50", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Table 2" in printed and "Table 1" in printed and "mIoU" in printed
    doc = json.loads(js.read_text())
    assert set(doc) >= {"baseline", "candidates"}
    assert {"per_pixel", "jaccard", "per_class_iou", "miou", "confusion"} <= set(doc["baseline"])
    onnx, int8 = doc["candidates"]
    for cand in (onnx, int8):
        assert set(cand["delta"]) == DELTA and 0.0 <= cand["agreement"] <= 1.0
    assert onnx["agreement"] >= 0.999 and abs(onnx["delta"]["miou"]) < 1e-3
    assert onnx["logit_error"]["max_abs"] < 1e-3 and onnx["logit_error"]["p99_abs"] <= onnx["logit_error"]["max_abs"]
    assert int8["precision"] == "int8" and int8["logit_error"]["mean_abs"] > 0
    for name in ("check.json", "check.md", "check_table1.md", "check_table1.csv", "check_table2.md",
                 "check_table2.csv", "check_delta.png"):
        assert (out / name).is_file(), name
    assert doc["gate"]["passed"] is True


def test_gate_fails_with_exit_1(arts, synth_root, tmp_path, capsys):
    worse = make_checkpoint(tmp_path / "untrained.pt", synth_root, steps=0)
    code = run(["check", str(arts["ckpt"]), str(worse), "--data", str(synth_root), "--threads", "1",
                "--max-miou-drop", "0.5", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "check failed" in err and "untrained.pt" in err and "drop" in err


def test_library_check(arts, synth_root):
    report = check(arts["ckpt"], [arts["onnx"]], synth_root, threads=1, progress=False)
    assert report["candidates"][0]["agreement"] >= 0.999
    assert "Table 2" in report["markdown"]


def test_bf16_accuracy_on_any_cpu(arts, synth_root, tmp_path, capsys, no_native_bf16):
    """--emulate-bf16: the checkpoint in bf16 is measured even on a CPU without native bf16
    (forced, so the refusal and the emulated run are exercised on every CPU).

    Truth: bf16 keeps 8 significant bits, so its logits must differ from fp32 by far more than
    fp32 reorderings do (~1e-6, the onnx fp32 row above) yet by well under a logit margin."""
    js = tmp_path / "c.json"
    spec = f"{arts['ckpt']}@bf16"
    args = ["check", str(arts["ckpt"]), spec, "--data", str(synth_root), "--threads", "1", "--no-progress"]
    assert run(args) == 2
    assert "--emulate-bf16" in capsys.readouterr().err
    assert run([*args, "--emulate-bf16", "--json", str(js)]) == 0
    cand = json.loads(js.read_text())["candidates"][0]
    assert cand["precision"] == "bf16 (emulated)"
    assert 1e-4 < cand["logit_error"]["mean_abs"] < 0.1, cand["logit_error"]
    assert cand["agreement"] >= 0.97
