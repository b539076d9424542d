"""cityseg bench times several models in interleaved rounds (issue 24 item 6): the order of runs,
each runner's own torch width, failures that stay in their row, and the load warning.

The runners are stand-ins that log every call, so the expected order is written out by hand."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from cityseg_deploy.bench import benchmark as bm
from cityseg_deploy.cli import run
from cityseg_deploy.cli.bench import load_warning


class LoggingRunner:
    """Logs ``(name, torch threads)`` per run; ``width`` is set on torch at load, as an
    onnxruntime runner holds torch at 1 thread while open; ``fail_at`` breaks the n-th run."""

    def __init__(self, name: str, log: list, width: int | None = None, fail_at: int | None = None):
        self.name, self.log, self.fail_at, self.runs = name, log, fail_at, 0
        self.backend, self.precision, self.input_size = "fake", "fp32", (8, 16)
        self.meta = SimpleNamespace(arch="none", arch_args={})
        self.previous = torch.get_num_threads()
        if width:
            torch.set_num_threads(width)

    def describe(self) -> dict:
        return {"backend": "fake", "precision": "fp32", "device": "cpu"}

    def run(self, images, timer=None):
        self.runs += 1
        if self.fail_at is not None and self.runs >= self.fail_at:
            raise RuntimeError(f"{self.name} broke")
        self.log.append((self.name, torch.get_num_threads()))

    def close(self) -> None:
        torch.set_num_threads(self.previous)


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """Three model files a, b, c whose runners log into one list."""
    log: list = []
    spec = {"a": {}, "b": {}, "c": {}}
    paths = {}
    for name in spec:
        paths[name] = tmp_path / f"{name}.onnx"
        paths[name].write_bytes(b"x")

    def load(path, runner, **_):
        name = str(path).rsplit("/", 1)[-1].split(".")[0]
        return LoggingRunner(name, log, **spec[name])

    monkeypatch.setattr(bm, "_load", load)
    monkeypatch.setattr(bm, "model_flops", lambda *a, **k: None)
    return SimpleNamespace(log=log, spec=spec, paths=paths)


def _timed(log: list, warmup: int, names=("a", "b", "c")) -> list[str]:
    """The log without each runner's warm-up runs (they come first, runner by runner)."""
    return [n for n, _ in log[warmup * len(names):]]


def test_rounds_rotate_through_the_runners(fakes):
    report = bm.benchmark([fakes.paths[n] for n in "abc"], warmup=1, iters=4, progress=False)
    assert [n for n, _ in fakes.log[:3]] == ["a", "b", "c"]  # each warmed as it loads
    assert _timed(fakes.log, 1) == list("abc" "bca" "cab" "abc")
    assert [r["iters"] for r in report["results"]] == [4, 4, 4]
    assert report["settings"]["timing"] == "interleaved"
    assert {r["timing"] for r in report["results"]} == {"interleaved"}
    assert [r["model"] for r in report["results"]] == ["a.onnx", "b.onnx", "c.onnx"]


def test_sequential_times_one_runner_after_another(fakes):
    report = bm.benchmark([fakes.paths[n] for n in "abc"], warmup=0, iters=3, progress=False,
                          interleave=False)
    assert [n for n, _ in fakes.log] == list("aaabbbccc")
    assert report["settings"]["timing"] == "sequential"


def test_each_runner_runs_at_the_torch_width_it_had_alone(fakes):
    """b holds torch at 1 thread while open (as an onnxruntime runner does): a, loaded before it,
    must still run at its own width, not at b's."""
    before = torch.get_num_threads()
    fakes.spec["b"] = {"width": 1}
    bm.benchmark([fakes.paths[n] for n in "abc"], warmup=0, iters=3, threads=2, progress=False)
    widths = {}
    for name, width in fakes.log:
        widths.setdefault(name, set()).add(width)
    assert widths == {"a": {2}, "b": {1}, "c": {1}}  # c keeps the width it found at its load
    assert torch.get_num_threads() == before


def test_a_runner_failing_mid_rounds_fails_its_row_only(fakes):
    fakes.spec["b"] = {"fail_at": 3}
    report = bm.benchmark([fakes.paths[n] for n in "abc"], warmup=1, iters=4, progress=False)
    rows = {r["model"]: r for r in report["results"]}
    assert rows["b.onnx"]["status"] == "failed" and "b broke" in rows["b.onnx"]["error"]
    assert rows["a.onnx"]["status"] == rows["c.onnx"]["status"] == "ok"
    assert rows["a.onnx"]["iters"] == rows["c.onnx"]["iters"] == 4
    assert [n for n in _timed(fakes.log, 1)].count("b") == 1  # run 2 timed, run 3 broke


def test_groups_are_timed_apart(fakes):
    """Ratios are taken within a group (the quickstart's networks): rounds span one group."""
    entries = [{"model": fakes.paths["a"], "group": "x"}, {"model": fakes.paths["b"], "group": "y"},
               {"model": fakes.paths["c"], "group": "x"}]
    report = bm.benchmark(entries, warmup=0, iters=2, progress=False)
    assert [n for n, _ in fakes.log] == list("acca" "bb")
    assert [r["model"] for r in report["results"]] == ["a.onnx", "b.onnx", "c.onnx"]


def test_cli_sequential_flag_and_json(fakes, tmp_path):
    js = tmp_path / "b.json"
    assert run(["bench", str(fakes.paths["a"]), str(fakes.paths["b"]), "--iters", "2", "--warmup", "0",
                "--sequential", "--json", str(js), "--no-progress"]) == 0
    assert json.loads(js.read_text())["settings"]["timing"] == "sequential"
    assert [n for n, _ in fakes.log] == list("aabb")


@pytest.mark.parametrize("loads, cpus, warns", [([[3.5, 1, 1], [1.0, 1, 1]], 2, True),
                                                ([[1.9, 9, 9], [2.0, 9, 9]], 2, False),
                                                ([None, [5.0, 1, 1]], 4, True),
                                                ([None, None], 1, False)])
def test_load_warning_when_the_load_exceeds_the_cpus(monkeypatch, loads, cpus, warns):
    monkeypatch.setattr("cityseg_deploy.system.threads.available_cpus", lambda: cpus)
    report = {"machine": {"load_average": loads[0], "load_average_end": loads[1]},
              "settings": {"timing": "interleaved"}}
    warning = load_warning(report)
    assert (warning is not None) == warns
    if warns:
        assert warning.startswith("warning: load average") and f"on {cpus} CPUs" in warning


def test_interleaved_rounds_report_progress(fakes):
    seen = []
    bm.bench_interleaved([{"model": fakes.paths[n]} for n in "ab"], warmup=0, iters=3,
                         on_round=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_a_runner_out_of_memory_beside_the_others_is_timed_alone(fakes, monkeypatch):
    """Interleaving holds every runner of a group at once; one that does not fit beside the
    others (here: b's load fails for memory while a is loaded) is timed alone and says so."""
    real = bm._load
    open_now: list[str] = []

    def load(path, runner, **kw):
        seg = real(path, runner, **kw)
        if seg.name == "b" and open_now:
            seg.close()
            raise MemoryError("out of memory")
        open_now.append(seg.name)
        close = seg.close

        def closed():
            open_now.remove(seg.name)
            close()

        seg.close = closed
        return seg

    monkeypatch.setattr(bm, "_load", load)
    report = bm.benchmark([fakes.paths[n] for n in "abc"], warmup=0, iters=2, progress=False)
    rows = {r["model"]: r for r in report["results"]}
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["b.onnx"]["timing"].startswith("alone") and rows["a.onnx"]["timing"] == "interleaved"
    assert [n for n, _ in fakes.log] == list("acca" "bb")


def test_a_runner_out_of_memory_at_its_first_run_is_timed_alone_too(fakes, monkeypatch):
    """CUDA memory often runs out at the first run (activations), not at load."""
    real = bm._load
    calls = {"b": 0}

    def load(path, runner, **kw):
        seg = real(path, runner, **kw)
        if seg.name == "b":
            calls["b"] += 1
            if calls["b"] == 1:  # beside a and c: its warm-up does not fit
                def run(images, timer=None):
                    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
                seg.run = run
        return seg

    monkeypatch.setattr(bm, "_load", load)
    report = bm.benchmark([fakes.paths[n] for n in "abc"], warmup=1, iters=2, progress=False)
    rows = {r["model"]: r for r in report["results"]}
    assert rows["b.onnx"]["status"] == "ok" and rows["b.onnx"]["timing"].startswith("alone")
    assert "timed alone" in bm.format_markdown(report)
