"""``cityseg quickstart`` end to end on a toy budget (slow: trains two presets for one epoch)."""
from __future__ import annotations

import json

import pytest

from cityseg_deploy.quickstart import QuickstartConfig, quickstart


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
    # A second run into the same folder reuses every finished step.
    again = QuickstartConfig(**{**cfg.__dict__, "timings": {}})
    quickstart(again)
    assert again.timings and all(s == 0.0 for s in again.timings.values())
