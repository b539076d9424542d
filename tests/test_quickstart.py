"""``cityseg quickstart`` end to end on a toy budget (slow: trains two presets for one epoch)."""
from __future__ import annotations

import json

import pytest

from cityseg_deploy.quickstart import (QuickstartConfig, choose_artifact, choose_video_network,
                                      demote_headings, quickstart)


@pytest.mark.slow
def test_quickstart_end_to_end_then_resumes(tmp_path):
    cfg = QuickstartConfig(out=tmp_path / "qs", models=("denseaspp_small", "unet_small"), n_train=4,
                           n_val=2, size=(64, 128), epochs=1, aoti=False, bench_iters=1,
                           video_frames=4, threads=2, progress=False, log=lambda _m: None)
    report = quickstart(cfg)
    text = report.read_text()
    assert "## denseaspp_small" in text and "## unet_small" in text and "**total**" in text
    steps = json.loads((cfg.out / "quickstart.json").read_text())["steps"]
    assert {"data", "bench", "segment", "train:unet_small", "export:denseaspp_small"} <= set(steps)
    # Every bench row's "x ref" refers to its own network's PyTorch row, not to the first network.
    rows = json.loads((cfg.out / "bench" / "bench.json").read_text())["results"]
    assert rows and all(r["status"] == "ok" for r in rows)
    for r in rows:
        arch = r["model"].split()[0]
        assert r["group"] == arch and r["reference"] == f"{arch} torch fp32", r
    # Fewer than three networks: the report does not speak of "the three"; no H1 after the title.
    assert "three networks" not in text and "## The two networks side by side" in text
    assert [l for l in text.splitlines() if l.startswith("# ")] == ["# cityseg quickstart report"]
    # The video uses the chosen artifact of the chosen network (by path, not the fallback best.pt),
    # and the report says why.
    assert "## Which artifact to deploy" in text and "fastest artifact within 1 mIoU" in text
    seg = steps["segment"]
    assert seg["arch"] == "denseaspp_small"  # the only 19-class network of the two
    check = json.loads((cfg.out / "check" / seg["arch"] / "check.json").read_text())
    pick = choose_artifact(seg["arch"], str(cfg.out / "runs" / seg["arch"] / "best.pt"), check, rows)
    # ... through the network's deploy folder, whose record names a copy of the chosen artifact
    assert seg["model"] == str(cfg.out / "deploy" / seg["arch"]) and "only 19-class network" in text
    record = json.loads((cfg.out / "deploy" / seg["arch"] / "deploy.json").read_text())
    assert record["pick"]["name"] == pick["label"]
    assert record["pick"]["artifact"] == pick["path"].rstrip("/").rsplit("/", 1)[-1]
    # A second run into the same folder reuses every finished step.
    again = QuickstartConfig(**{**cfg.__dict__, "timings": {}})
    quickstart(again)
    assert again.timings and all(s == 0.0 for s in again.timings.values())


def _row(label, path, group, ms, status="ok"):
    return {"model": label, "path": path, "group": group, "status": status,
            "latency_ms": {"median": ms}}


def _check(*cands):
    return {"baseline": {"model": "best.pt"},
            "candidates": [{"model": p.split("/")[-1], "path": p, "delta": {"miou": d}} for p, d in cands]}


def test_choose_artifact_is_the_fastest_within_the_gate_matched_by_path(tmp_path):
    base = str(tmp_path / "runs/a/best.pt")
    onnx, int8, ov = (str(tmp_path / f"artifacts/{n}") for n in ("a.onnx", "a_int8.onnx", "a_ov"))
    rows = [_row("a torch fp32", base, "a", 30.0), _row("a onnx fp32", onnx, "a", 20.0),
            _row("a onnx int8", int8, "a", 5.0),    # fastest, but 1.5 pts below: out
            _row("a openvino int8", ov, "a", 10.0),  # within the gate: chosen
            _row("b onnx int8", str(tmp_path / "artifacts/b.onnx"), "b", 1.0)]
    check = _check((onnx, 0.0), (int8, -0.015), (ov, -0.004))
    pick = choose_artifact("a", base, check, rows)
    assert pick["path"] == ov and pick["label"] == "a openvino int8"
    assert pick["median_ms"] == 10.0 and pick["delta_miou"] == pytest.approx(-0.4)
    assert "3.00x" in pick["reason"] and "ΔmIoU -0.40 pts" in pick["reason"]
    assert ("a onnx int8", "ΔmIoU -1.50 pts, more than 1 below PyTorch") in pick["rejected"]
    # Nothing within the gate faster than PyTorch: the checkpoint itself.
    pick = choose_artifact("a", base, _check((int8, -0.02)), rows)
    assert pick["path"] == base
    # The old bug: rows keyed by label never matched a path, so best.pt was always "chosen".
    assert choose_artifact("a", base, check, [dict(r, path=None) for r in rows])["median_ms"] is None


def test_video_network_compares_mious_only_within_one_label_set():
    docs = {"deeplabv3_small": {"num_classes": 19, "miou": 0.28},
            "unet_small": {"num_classes": 10, "miou": 0.54},      # higher, but 10 classes
            "denseaspp_small": {"num_classes": 19, "miou": 0.27}}
    arch, why = choose_video_network(docs)
    assert arch == "deeplabv3_small"
    assert "among the 19-class networks" in why and "unet_small predicts another class set" in why
    assert choose_video_network({"unet_small": docs["unet_small"]})[0] == "unet_small"


def test_demote_headings_keeps_text_and_code():
    md = "# Bench\n\n| a |\n#hashtag\n## Sub"
    assert demote_headings(md, 2) == "### Bench\n\n| a |\n#hashtag\n#### Sub"
