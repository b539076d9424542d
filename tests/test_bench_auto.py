"""``--backend auto``: the pick is the measured minimum, cached per machine/model/shape, and
re-measured when the model file changes or the cache is unreadable.  Real timings on the CPU
(checkpoint vs its ONNX graph) for the CLI; scripted timings for the cache logic."""
from __future__ import annotations

import json
import os
import re

import pytest
import torch

from cityseg_deploy.bench.auto import Candidate, cache_path, choose, default_candidates
from cityseg_deploy.cli import run
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.models.checkpoint import ModelMeta, save_checkpoint
from cityseg_deploy.models.registry import build_model

SIZE = (32, 64)


@pytest.fixture()
def ckpt(tmp_path, monkeypatch):
    monkeypatch.setenv("CITYSEG_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    meta = ModelMeta.for_arch("unet_small", input_size=SIZE)
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("unet_small", **meta.arch_args).eval(), meta)
    return path


def scripted(latencies: dict[str, float | None], calls: list[str]):
    """A measure function returning the given medians (None = a failed row), recording calls."""
    def measure(spec, *, label, **_):
        calls.append(label)
        ms = latencies[label]
        if ms is None:
            return {"status": "failed", "error": "boom"}
        return {"status": "ok", "latency_ms": {"median": ms}}
    return measure


def candidates(ckpt):
    return [Candidate("a", str(ckpt)), Candidate("b", str(ckpt), options={"x": 1}), Candidate("c", str(ckpt))]


def test_picks_the_measured_minimum_and_caches_it(ckpt):
    calls: list[str] = []
    first = choose(candidates(ckpt), device="cpu", size=SIZE,
                   measure=scripted({"a": 3.0, "b": 1.5, "c": None}, calls))
    assert first.candidate.name == "b" and not first.cached and calls == ["a", "b", "c"]
    assert first.measured["c"].startswith("failed") and "1.50 ms" in first.reason and "a 3.00 ms" in first.reason
    again = choose(candidates(ckpt), device="cpu", size=SIZE, measure=scripted({}, calls))
    assert again.cached and again.candidate.name == "b" and len(calls) == 3  # nothing re-measured
    other_shape = choose(candidates(ckpt), device="cpu", size=(64, 128),
                         measure=scripted({"a": 1.0, "b": 2.0, "c": 3.0}, calls))
    assert other_shape.candidate.name == "a" and not other_shape.cached


def test_changed_model_or_broken_cache_is_measured_again(ckpt):
    calls: list[str] = []
    choose(candidates(ckpt), device="cpu", size=SIZE, measure=scripted({"a": 1.0, "b": 2.0, "c": 3.0}, calls))
    st = os.stat(ckpt)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new file under the same name
    changed = choose(candidates(ckpt), device="cpu", size=SIZE,
                     measure=scripted({"a": 5.0, "b": 2.0, "c": 3.0}, calls))
    assert not changed.cached and changed.candidate.name == "b"
    cache_path().write_text("{not json")
    broken = choose(candidates(ckpt), device="cpu", size=SIZE,
                    measure=scripted({"a": 1.0, "b": 2.0, "c": 3.0}, calls))
    assert not broken.cached and broken.candidate.name == "a"
    assert json.loads(cache_path().read_text())  # rewritten whole


def test_every_candidate_failing_is_one_clear_error(ckpt):
    with pytest.raises(CitysegError, match="every candidate failed"):
        choose(candidates(ckpt)[:1], device="cpu", measure=scripted({"a": None}, []))


def test_cuda_candidates_for_a_checkpoint(ckpt, tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    names = [c.name for c in default_candidates(ckpt, "cuda", compile=True, extra=[onnx])]
    assert names == ["torch fp16 channels_last + CUDA graphs", "torch fp16 NCHW + CUDA graphs",
                     "torch fp16 torch.compile + CUDA graphs", "onnx m.onnx + CUDA graph",
                     "onnx m.onnx NHWC + CUDA graph"]
    assert [c.name for c in default_candidates(ckpt, "cpu")] == ["torch m.pt"]


def test_cli_bench_auto_measures_checkpoint_and_onnx(ckpt, tmp_path, capsys):
    from cityseg_deploy.export import export

    onnx = export(ckpt, format="onnx", size=SIZE, out=tmp_path / "m.onnx", verify=False, log=None).path
    out = tmp_path / "b.json"
    code = run(["bench", str(ckpt), str(onnx), "--backend", "auto", "--iters", "3", "--warmup", "1",
                "--no-progress", "--json", str(out)])
    output = capsys.readouterr().out
    assert code == 0, output
    line = next(ln for ln in output.splitlines() if ln.startswith("auto: "))
    measured = dict(re.findall(r"(torch m\.pt|onnx m\.onnx): ([0-9.]+) ms", line.split("measured: ")[1]))
    fastest = min(measured, key=lambda n: float(measured[n]))
    assert line.startswith(f"auto: {fastest} — fastest of 2 measured")
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 1 and rows[0]["model"] == f"auto: {fastest}" and rows[0]["status"] == "ok"
    assert run(["bench", str(ckpt), str(onnx), "--backend", "auto", "--iters", "2", "--warmup", "1",
                "--no-progress"]) == 0
    assert "(cached measurement)" in capsys.readouterr().out


def test_auto_takes_model_at_precision(ckpt, tmp_path):
    """``MODEL@fp32`` used to be looked up as a file named ``m.pt@fp32`` ("no such file")."""
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    cuda = default_candidates(f"{ckpt}@fp32", "cuda", extra=[f"{onnx}@fp16"])
    assert [(c.name, c.spec, c.precision) for c in cuda] == [
        ("torch fp32 channels_last + CUDA graphs", str(ckpt), "fp32"),
        ("torch fp32 NCHW + CUDA graphs", str(ckpt), "fp32"),
        ("onnx m.onnx + CUDA graph", str(onnx), "fp16"),
        ("onnx m.onnx NHWC + CUDA graph", str(onnx), "fp16")]
    cpu = default_candidates(f"{ckpt}@bf16", "cpu")
    assert [(c.name, c.spec, c.precision) for c in cpu] == [("torch m.pt@bf16", str(ckpt), "bf16")]


def test_auto_row_is_its_own_measurement(ckpt, tmp_path, capsys):
    """The bench row of the winner is the measurement auto chose it by (it was re-measured, and
    on an H200 read 8.0 ms for a runner auto had timed at 3.38 ms); a cached choice is measured
    again and the row keeps the cached figure beside it."""
    out = tmp_path / "b.json"
    assert run(["bench", f"{ckpt}@fp32", "--backend", "auto", "--iters", "2", "--warmup", "0",
                "--threads", "1", "--no-progress", "--json", str(out)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("auto: "))
    chosen = float(re.search(r"torch m\.pt@fp32: ([0-9.]+) ms", line).group(1))
    row = json.loads(out.read_text())["results"][0]
    assert row["precision"] == "fp32" and row["auto_cached"] is False
    assert row["latency_ms"]["median"] == pytest.approx(chosen, abs=5e-3)  # printed to 2 decimals
    assert row["latency_ms"]["median"] == pytest.approx(row["auto_measured_ms"], abs=5e-4)
    assert run(["bench", f"{ckpt}@fp32", "--backend", "auto", "--iters", "2", "--warmup", "0",
                "--threads", "1", "--no-progress", "--json", str(out)]) == 0
    again = json.loads(out.read_text())["results"][0]
    assert again["auto_cached"] is True and again["auto_measured_ms"] == row["auto_measured_ms"]


def test_auto_row_note_says_why_a_cached_figure_differs():
    from cityseg_deploy.cli.bench import auto_row_note

    row = {"status": "ok", "latency_ms": {"median": 8.0}, "auto_measured_ms": 3.38, "auto_cached": True}
    assert "cached measurement was 3.38 ms" in auto_row_note([row])
    assert auto_row_note([dict(row, latency_ms={"median": 3.5})]) is None


def test_cli_auto_times_candidates_at_the_threads_asked_and_keys_the_cache_by_them(ckpt, monkeypatch,
                                                                                     capsys):
    """``bench --backend auto --threads 1``: each candidate is timed with 1 thread (the flag used
    to be dropped: candidates ran on every core) and a 2-thread pick is a different cache entry."""
    import cityseg_deploy.bench.benchmark as benchmark_module

    seen: list[tuple] = []

    def fake_bench_one(spec, *, label=None, threads=None, **kwargs):
        seen.append((label, threads, torch.get_num_threads()))
        return {"model": label, "status": "ok", "latency_ms": {"median": 1.0}, "backend": "torch",
                "precision": "fp32", "batch": 1, "size": list(SIZE)}

    monkeypatch.setattr(benchmark_module, "bench_one", fake_bench_one)
    monkeypatch.setattr(benchmark_module, "benchmark",
                        lambda models, **kw: {"machine": {}, "results": [{"status": "ok"}]})
    monkeypatch.setattr(benchmark_module, "format_markdown", lambda report: "")
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    for threads in (other, other):
        run(["bench", str(ckpt), "--backend", "auto", "--threads", str(threads), "--no-progress"])
    assert seen == [("torch m.pt", other, other)]  # measured once at the asked count, then cached
    assert torch.get_num_threads() == before  # put back after the measurement
    run(["bench", str(ckpt), "--backend", "auto", "--no-progress"])
    assert len(seen) == 2 and seen[1][1] is None  # another thread count: measured again
