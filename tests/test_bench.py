"""cityseg bench: contract JSON keys, stage statistics, and failing rows that do not abort."""
from __future__ import annotations

import json

from cityseg_deploy.bench.benchmark import benchmark
from cityseg_deploy.system.timing import STAT_KEYS, StageTimer, stats
from cityseg_deploy.cli import run
from test_runtime_artifacts import arts  # noqa: F401

ROW = {"model", "backend", "precision", "device", "batch", "size", "status", "error", "latency_ms",
       "throughput_fps", "peak_mem_mb", "file_mb"}


def test_bench_json_md_plot_and_failed_rows(arts, tmp_path, capsys):
    js, md, png = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"
    code = run(["bench", str(arts["ckpt"]), str(tmp_path / "missing.onnx"), str(arts["onnx"]),
                f"{arts['ov']}@bf16", str(arts["ov_int8"]), "--batch", "1,2", "--warmup", "1",
                "--iters", "2", "--threads", "1", "--json", str(js), "--md", str(md), "--plot", str(png),
                "--no-progress"])
    assert code == 0
    doc = json.loads(js.read_text())
    assert {"cpu", "cpu_flags", "threads", "gpu", "versions"} <= set(doc["machine"])
    rows = doc["results"]
    assert len(rows) == 10
    for row in rows:
        assert ROW <= set(row)
    by = {(r["model"], r["batch"]): r for r in rows}
    assert by[("missing.onnx", 1)]["status"] == "failed" and "no such file" in by[("missing.onnx", 1)]["error"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["backend"] for r in ok} >= {"torch", "onnxruntime", "openvino"}
    for r in ok:
        assert set(r["latency_ms"]) == set(STAT_KEYS)
        assert r["latency_ms"]["min"] <= r["latency_ms"]["median"] <= r["latency_ms"]["max"]
        assert r["throughput_fps"] > 0 and r["size"] == [64, 128] and r["file_mb"] > 0
        assert {"preprocess", "compute", "d2h", "end_to_end"} <= set(r["stages"])
    assert by[(arts["ckpt"].name, 1)]["ratio"] == 1.0
    assert md.read_text().count("\n| ") >= 10 and png.stat().st_size > 0
    assert "failed" in md.read_text()


def test_size_sweep_static_graph_fails_alone(arts):
    report = benchmark([arts["ckpt"], arts["onnx"]], sizes=[(64, 128), (32, 64)], warmup=0, iters=1,
                       threads=1, progress=False)
    status = {(r["model"], tuple(r["size"] or ())): r["status"] for r in report["results"]}
    assert status[(arts["ckpt"].name, (32, 64))] == "ok"
    assert status[(arts["onnx"].name, (64, 128))] == "ok"
    failed = [r for r in report["results"] if r["status"] == "failed"]
    assert len(failed) == 1 and "static graph" in failed[0]["error"]


def test_stage_timer_and_stats():
    t = StageTimer("cpu")
    for _ in range(3):
        t.begin()
        with t.stage("compute"):
            sum(range(1000))
        t.step()
    s = t.summary()
    assert set(s) == {"compute", "end_to_end"} and len(t.samples["compute"]) == 3
    st = stats([1.0, 2.0, 3.0, 4.0])
    assert st["min"] == 1.0 and st["max"] == 4.0 and st["median"] == 2.5


def test_ratios_refer_to_the_first_row_of_the_same_group():
    """Quickstart rows of network B must not be ratioed against network A's PyTorch row."""
    from cityseg_deploy.bench.benchmark import add_ratios, format_markdown
    from cityseg_deploy.system.machine import machine_info

    def row(model, fps, group=None):
        r = {"model": model, "status": "ok", "batch": 1, "size": [64, 128], "throughput_fps": fps,
             "backend": "x", "precision": "fp32", "device": "cpu", "latency_ms": None}
        if group:
            r["group"] = group
        return r

    rows = [row("a torch", 10.0, "a"), row("a onnx", 20.0, "a"), row("b torch", 40.0, "b"),
            row("b onnx", 60.0, "b")]
    add_ratios(rows)
    assert [r["reference"] for r in rows] == ["a torch", "a torch", "b torch", "b torch"]
    assert [r["ratio"] for r in rows] == [1.0, 2.0, 1.0, 1.5]
    md = format_markdown({"machine": machine_info(1), "results": rows})
    assert "first row of the same network (`a torch`, `b torch`)" in md
    plain = [row("a torch", 10.0), row("b onnx", 60.0)]
    add_ratios(plain)
    assert plain[1]["reference"] == "a torch" and plain[1]["ratio"] == 6.0


def test_suite_records_failed_bf16_row_and_judges_targets(tmp_path, no_native_bf16):
    """A CPU suite: a torch bf16 row on a CPU without native bf16 (forced, so on every CPU) is a
    failed row with its reason (never a crash), the plain-OpenVINO reference runs, targets are
    judged, files are written."""
    import yaml

    from cityseg_deploy.bench.suite import run_suite

    suite = {
        "name": "tiny", "title": "tiny suite", "model": {"arch": "denseaspp_small", "size": [64, 128]},
        "calib": {"images": 2, "size": [64, 128]},
        "artifacts": {"onnx_fp32": {"format": "onnx"}, "ov_int8": {"format": "openvino", "precision": "int8"}},
        "settings": {"warmup": 0, "iters": 2, "sgemm": False, "threads": 1},
        "reference": "torch eager fp32",
        "rows": [{"label": "torch eager fp32", "artifact": "checkpoint"},
                 {"label": "torch bf16", "artifact": "checkpoint", "precision": "bf16"},
                 {"label": "onnxruntime fp32", "artifact": "onnx_fp32"},
                 {"label": "openvino int8", "artifact": "ov_int8"},
                 {"label": "openvino int8 plain", "artifact": "ov_int8", "runner": "plain_openvino"}],
        "targets": [{"row": "onnxruntime fp32", "min_ratio": 0.01},
                    {"row": "openvino int8", "vs": "openvino int8 plain", "min_ratio": 0.01},
                    {"row": "torch bf16", "min_ratio": 1.0}],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite))
    report = run_suite(path, work=tmp_path / "work", results=tmp_path / "res" / "tiny", progress=False)
    by = {r["model"]: r for r in report["results"]}
    assert by["torch eager fp32"]["status"] == "ok" and by["openvino int8 plain"]["status"] == "ok"
    bf16 = by["torch bf16"]
    assert bf16["status"] == "failed" and "no native bf16" in bf16["error"]
    assert report["targets"][2]["met"] is None  # a failed row is not judged
    assert report["targets"][0]["met"] and report["targets"][1]["met"]
    for ext in (".json", ".md", ".png"):
        assert (tmp_path / "res" / f"tiny{ext}").stat().st_size > 0
    assert "failed" in (tmp_path / "res" / "tiny.md").read_text()


def test_bench_says_when_the_int8_graph_was_reshaped(arts, tmp_path):
    """The Markdown note of an onnxruntime int8 row says the runner reshaped the graph."""
    md = tmp_path / "b.md"
    assert run(["bench", str(arts["onnx_int8"]), str(arts["onnx"]), "--warmup", "1", "--iters", "2",
                "--threads", "1", "--md", str(md), "--no-progress"]) == 0
    rows = [ln for ln in md.read_text().splitlines() if ln.startswith(f"| {arts['onnx_int8'].name} ")]
    plain = [ln for ln in md.read_text().splitlines() if ln.startswith(f"| {arts['onnx'].name} ")]
    assert rows and rows[0].rstrip(" |").endswith("int8 reshaped for onnxruntime at load")
    assert plain and "reshaped" not in plain[0]
