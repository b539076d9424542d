"""``cityseg optimize``: the rule (no models), and one short real run on the synthetic preset.

The real run is the CI run the issue asks for: DeepLabV3-small at 64x128, 4 val images, the
baseline and one int8 candidate, 2 timing rounds — then the same command again, which must reuse
every export and check (resumable), and the folder it wrote must work as a MODEL.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from cityseg_deploy.cli import run
from cityseg_deploy.optimize import candidates as cand_module
from cityseg_deploy.optimize.pick import pick
from support import error_line, random_checkpoint


def _row(name, delta, ms, status="ok"):
    return {"name": name, "status": status, "delta_miou_pts": delta,
            "latency_ms": {"median": ms} if ms is not None else None}


def test_pick_is_the_fastest_within_the_budget_and_names_what_fell_out():
    rows = [_row("torch fp32", 0.0, 100.0), _row("onnx int8", -0.8, 10.0),   # fastest, -0.8: out
            _row("openvino int8", -0.3, 20.0), _row("onnx fp32", 0.0, 30.0),
            _row("trt fp16", None, None, status="skipped")]
    verdict = pick(rows, baseline="torch fp32", max_drop=0.5)
    assert verdict.name == "openvino int8" and verdict.median_ms == 20.0
    assert verdict.refused == [{"name": "onnx int8", "drop_pts": 0.8, "median_ms": 10.0,
                                "reason": "mIoU 0.80 pts below torch fp32, more than 0.5"}]
    assert "5.00x" in verdict.why and "onnx int8 (10.00 ms, -0.80 pts)" in verdict.why
    assert [s["name"] for s in verdict.slower] == ["onnx fp32", "torch fp32"]
    # a wider budget admits it; a zero budget leaves the lossless ones
    assert pick(rows, baseline="torch fp32", max_drop=1.0).name == "onnx int8"
    assert pick(rows, baseline="torch fp32", max_drop=0.0).name == "onnx fp32"


def test_pick_falls_back_to_the_baseline_when_nothing_ran():
    verdict = pick([_row("torch fp32", 0.0, None, status="failed")], baseline="torch fp32", max_drop=0.5)
    assert verdict.name == "torch fp32" and "by default" in verdict.why


def test_cpu_candidates_skip_with_a_reason_where_they_cannot_run(monkeypatch):
    from cityseg_deploy.system import machine

    monkeypatch.setattr(machine, "has_native_bf16", lambda: False)
    bf16 = [c for c in cand_module.CPU if "bf16" in c.slug]
    assert bf16 and all("no native bf16" in c.unavailable() for c in bf16)
    assert cand_module.candidates_for("cpu", ["onnx_int8"])[0].slug == "torch_fp32"  # baseline kept
    with pytest.raises(cand_module.CitysegError, match="trt_fp16"):
        cand_module.candidates_for("cpu", ["trt_fp16"])


def test_cuda_candidates_say_why_they_are_skipped(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorrt" else real(name, *a))
    trt = [c for c in cand_module.CUDA if c.format == "trt"]
    assert trt and all("TensorRT is not installed" in c.unavailable() for c in trt)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("optimize") / "dl.pt", "deeplabv3_small")


def test_optimize_writes_a_deploy_folder_and_resumes(ckpt, synth_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "dl_deploy"
    args = ["optimize", str(ckpt), "--data", str(synth_root), "--out", str(out), "--candidates",
            "onnx_int8", "--rounds", "2", "--threads", "1", "--no-progress"]
    assert run(args) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "deploy.json").read_text())
    names = [c["name"] for c in record["candidates"]]
    assert names == ["torch fp32", "onnx int8 (tensorrt layout, reshaped at load)"]
    assert all(c["status"] == "ok" and c["latency_ms"]["median"] > 0 for c in record["candidates"])
    assert record["candidates"][0]["delta_miou_pts"] == 0.0
    assert record["candidates"][0]["agreement"] == 1.0  # the baseline against itself
    # the pick's agreement, measured again without optimize: the deploy folder's runner against
    # the checkpoint's, label for label on the same val images
    from cityseg_deploy import runtime
    from cityseg_deploy.data.cityscapes import find_samples
    from cityseg_deploy.fileio import read_rgb

    images = [read_rgb(s.image) for s in find_samples(synth_root, "val")]
    with runtime.load(ckpt) as base, runtime.load(out) as chosen:
        same = sum(int((base.predict(im) == chosen.predict(im)).sum()) for im in images)
    agreement = same / sum(im.shape[0] * im.shape[1] for im in images)
    chosen_row = next(c for c in record["candidates"] if c["name"] == record["pick"]["name"])
    assert chosen_row["agreement"] == pytest.approx(agreement, abs=1e-9)
    pick_ = record["pick"]
    assert pick_["name"] in names and (out / pick_["artifact"]).exists() and pick_["threads"] == 1
    fastest = min(record["candidates"], key=lambda c: c["latency_ms"]["median"])
    drop = -fastest["delta_miou_pts"]
    assert pick_["name"] == (fastest["name"] if drop <= 0.5 else "torch fp32")
    assert {"cpu", "cpu_flags", "usable_cpus", "gpu", "versions"} <= set(record["machine"])
    assert f"deploy: {out / 'deploy.json'} → {pick_['artifact']}" in printed
    # the same command again: no export and no check runs (their inputs did not change)
    check_module = importlib.import_module("cityseg_deploy.evaluation.check")  # the package
    # re-exports the function under the module's name
    import cityseg_deploy.export as export_module

    def boom(*_a, **_k):
        raise AssertionError("re-ran a finished step")

    monkeypatch.setattr(export_module, "export", boom)
    monkeypatch.setattr(check_module, "check", boom)
    assert run(args + ["--max-drop", "100"]) == 0
    again = json.loads((out / "deploy.json").read_text())
    assert again["max_drop"] == 100 and again["pick"]["name"] == fastest["name"]
    # the folder is a MODEL
    from cityseg_deploy import runtime

    with runtime.load(out) as seg:
        assert seg.threads == 1


def test_optimize_refusals_are_listed_with_their_drop(ckpt, synth_root, tmp_path, monkeypatch, capsys):
    """A candidate 2 points below the baseline (the check's answer forced) falls out, said so."""
    check_module = importlib.import_module("cityseg_deploy.evaluation.check")  # the package
    # re-exports the function under the module's name

    real = check_module.check

    def worse(*a, **k):
        report = real(*a, **k)
        for doc in report["candidates"]:
            doc["delta"]["miou"] = -0.02
        return report

    monkeypatch.setattr(check_module, "check", worse)
    out = tmp_path / "d"
    assert run(["optimize", str(ckpt), "--data", str(synth_root), "--out", str(out), "--candidates",
                "onnx_fp32", "--rounds", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "deploy.json").read_text())
    assert record["pick"]["name"] == "torch fp32"
    assert record["refused"][0]["name"] == "onnx fp32" and record["refused"][0]["drop_pts"] == 2.0
    assert "refused by --max-drop 0.5: onnx fp32 (-2.00 pts)" in printed


@pytest.mark.parametrize("args, says", [
    (["--max-drop", "-1"], "--max-drop"),
    (["--device", "tpu"], "--device"),
    (["--candidates", "nope"], "--candidates"),
])
def test_bad_input_is_one_error_line(ckpt, synth_root, tmp_path, capsys, args, says):
    assert run(["optimize", str(ckpt), "--data", str(synth_root), "--out", str(tmp_path / "o"),
                "--no-progress", *args]) == 2
    assert says in error_line(capsys)
    assert not (tmp_path / "o" / "deploy.json").exists()


def test_missing_inputs_are_one_error_line(ckpt, synth_root, tmp_path, capsys):
    assert run(["optimize", str(tmp_path / "none.pt"), "--data", str(synth_root)]) == 2
    assert "none.pt" in error_line(capsys)
    assert run(["optimize", str(ckpt), "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "o")]) == 2
    assert "nodata" in error_line(capsys)
    (tmp_path / "file").write_text("x")
    assert run(["optimize", str(ckpt), "--data", str(synth_root), "--out", str(tmp_path / "file" / "d")]) == 2
    assert "is a file" in error_line(capsys)


def test_interleaved_timing_keeps_going_past_a_runner_that_fails(ckpt, tmp_path):
    from cityseg_deploy.bench.auto import Candidate
    from cityseg_deploy.bench.interleaved import time_interleaved

    rows = time_interleaved([Candidate("torch", str(ckpt)), Candidate("gone", str(tmp_path / "gone.onnx")),
                             Candidate("torch again", str(ckpt), options={"fuse_bn": False})],
                            rounds=3, warmup=0, threads=1)
    assert rows["gone"]["status"] == "failed" and "gone.onnx" in rows["gone"]["error"]
    for name in ("torch", "torch again"):
        assert rows[name]["status"] == "ok" and rows[name]["rounds"] == 3
        lat = rows[name]["latency_ms"]
        assert 0 < lat["min"] <= lat["median"] <= lat["max"]


def test_interleaved_timing_runs_torch_at_its_own_width_beside_onnxruntime(ckpt, tmp_path, monkeypatch):
    """An onnxruntime runner holds torch at 1 thread while open; the torch runner loaded before
    it must still be timed at the width it set for itself (here 2), and torch's count is put back."""
    import torch

    from cityseg_deploy.bench import interleaved
    from cityseg_deploy.export import export

    onnx = export(ckpt, format="onnx", out=tmp_path / "m.onnx", log=None, verify=False).path
    seen: list[tuple[str, int]] = []
    before = torch.get_num_threads()
    from cityseg_deploy import runtime

    real_load = runtime.load

    def load(*a, **k):  # every run logs (backend, torch's thread count at that moment)
        seg = real_load(*a, **k)
        real_run = seg.run

        def run(*args, **kwargs):
            seen.append((seg.backend, torch.get_num_threads()))
            return real_run(*args, **kwargs)

        seg.run = run
        return seg

    monkeypatch.setattr(runtime, "load", load)
    interleaved.time_interleaved([interleaved.Candidate("torch", str(ckpt)), interleaved.Candidate("onnx", str(onnx))],
                                 rounds=2, warmup=0, threads=2)
    # rounds rotate: torch, onnx | onnx, torch
    assert seen == [("torch", 2), ("onnxruntime", 1), ("onnxruntime", 1), ("torch", 2)]
    assert torch.get_num_threads() == before
