"""quickstart re-runs with other options (issue 27 item 14): each step's record holds the options
it ran with; a step whose options changed is refused (naming step and options) or, with
``--overwrite``, redone from scratch with what depends on it; the report says what ran.

Fast: the step bodies are stand-ins that write marker files (the real steps are exercised by the
slow end-to-end test in test_quickstart.py).
"""
from __future__ import annotations

import json

import pytest

from cityseg_deploy import quickstart as qs
from cityseg_deploy.errors import CitysegError


@pytest.fixture
def stand_ins(monkeypatch):
    calls: list[str] = []

    def marker(cfg, name, folder):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name.replace(':', '_')}.txt"
        path.write_text(json.dumps(qs.step_options(cfg, name)))
        calls.append(name)
        return path

    def data(cfg):
        path = marker(cfg, "data", cfg.data)
        (cfg.data / f"n{cfg.n_train}.txt").write_text("")
        return {"outputs": [str(path)]}

    def train(cfg, arch):
        resumed = (cfg.out / "runs" / arch / f"train_{arch}.txt").exists()
        return {"outputs": [str(marker(cfg, f"train:{arch}", cfg.out / "runs" / arch))],
                "resumed": resumed}

    def export(cfg, arch):
        path = marker(cfg, f"export:{arch}", cfg.out / "artifacts")
        return {"outputs": [str(path)], "artifacts": {}}

    def check(cfg, arch, _artifacts):
        return {"outputs": [str(marker(cfg, f"check:{arch}", cfg.out / "check" / arch))]}

    def bench(cfg, _entries):
        return {"outputs": [str(marker(cfg, "bench", cfg.out / "bench"))]}

    def deploy(cfg, _state):
        return {"outputs": [str(marker(cfg, "deploy", cfg.out / "deploy"))], "folders": {}}

    def segment(cfg, _pick):
        return {"outputs": [str(marker(cfg, "segment", cfg.out / "video"))]}

    monkeypatch.setattr(qs, "step_data", data)
    monkeypatch.setattr(qs, "step_train", train)
    monkeypatch.setattr(qs, "step_export", export)
    monkeypatch.setattr(qs, "step_check", check)
    monkeypatch.setattr(qs, "step_bench", bench)
    monkeypatch.setattr(qs, "step_deploy", deploy)
    monkeypatch.setattr(qs, "step_segment", segment)
    monkeypatch.setattr(qs, "_pick_video_model", lambda cfg, state: {})
    monkeypatch.setattr(qs, "write_report", lambda cfg, state: cfg.out / "report.md")
    return calls


def _cfg(tmp_path, **kw):
    base = dict(out=tmp_path / "qs", models=("unet_small", "deeplabv3_small"), n_train=48,
                n_val=12, log=lambda _m: None, progress=False)
    return qs.QuickstartConfig(**{**base, **kw})


ALL = ["data", "train:unet_small", "train:deeplabv3_small", "export:unet_small", "check:unet_small",
       "export:deeplabv3_small", "check:deeplabv3_small", "bench", "deploy", "segment"]


def test_same_options_reuse_every_step(tmp_path, stand_ins):
    qs.quickstart(_cfg(tmp_path))
    assert stand_ins == ALL
    stand_ins.clear()
    qs.quickstart(_cfg(tmp_path))
    assert stand_ins == []


@pytest.mark.parametrize("change,first_redone", [
    ({"n_train": 8, "n_val": 4}, "data"),
    ({"size": (64, 128)}, "data"),
    ({"epochs": 2}, "train:unet_small"),
    ({"aoti": False}, "export:unet_small"),
    ({"bench_iters": 3}, "bench"),
    ({"video_frames": 9}, "segment"),
])
def test_other_options_are_refused_then_redone_with_overwrite(tmp_path, stand_ins, change, first_redone):
    qs.quickstart(_cfg(tmp_path))
    stand_ins.clear()
    with pytest.raises(CitysegError, match=rf"step '{first_redone}' ran with other options.*--overwrite"):
        qs.quickstart(_cfg(tmp_path, **change))
    assert stand_ins == []
    qs.quickstart(_cfg(tmp_path, **change, overwrite=True))
    assert stand_ins == ALL[ALL.index(first_redone):]  # the changed step and all after it
    for name in stand_ins:  # every output now records the new options
        record = json.loads((tmp_path / "qs" / "quickstart.json").read_text())["steps"][name]
        assert record["options"] == qs.step_options(_cfg(tmp_path, **change), name)
    if first_redone == "data":  # the old data is gone, not mixed with the new
        assert sorted(p.name for p in (tmp_path / "qs" / "data").iterdir()) == [
            "data.txt", f"n{change.get('n_train', 48)}.txt"]
    if first_redone == "train:unet_small":  # redone from scratch, not resumed
        steps = json.loads((tmp_path / "qs" / "quickstart.json").read_text())["steps"]
        assert steps["train:unet_small"]["resumed"] is False


def test_fewer_models_reuse_their_training_and_redo_bench(tmp_path, stand_ins):
    qs.quickstart(_cfg(tmp_path))
    stand_ins.clear()
    qs.quickstart(_cfg(tmp_path, models=("unet_small",), overwrite=True))
    assert stand_ins == ["bench", "deploy", "segment"]


def test_the_report_says_which_steps_ran_and_with_what(tmp_path, stand_ins):
    cfg = _cfg(tmp_path)
    qs.quickstart(cfg)
    cfg2 = _cfg(tmp_path, bench_iters=3, overwrite=True)
    qs.quickstart(cfg2)
    state = qs.State(cfg2.out)
    state.ran = {"bench", "segment"}
    rows = {ln.split("|")[1].strip(): ln for ln in qs._steps_section(state, qs.step_names(cfg2))
            if ln.startswith("| ") and "---" not in ln}
    assert "| ran |" in rows["bench"] and "bench_iters=3" in rows["bench"]
    assert "reused (finished " in rows["data"] and "train=48" in rows["data"]
