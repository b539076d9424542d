"""How a plain checkpoint runs when nobody said how (issue 24 item 3), and the runner line.

The policy is a pure function (``torch_defaults``), so the CUDA decisions are checked here on a
CPU; the CUDA runner that follows them is proven in test_gpu.py.  The independent truth for the
runner line is the runner's own ``describe()``: the line must name what it reports.
"""
from __future__ import annotations

import json

import pytest
import torch

from cityseg_deploy import runtime
from cityseg_deploy.cli import run
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.precision import PRECISIONS, RUN_PRECISIONS
from cityseg_deploy.runtime.base import describe_runner
from cityseg_deploy.runtime.torch_backend import overflowing_parameters
from cityseg_deploy.runtime.torch_defaults import TorchRunPlan, fp16_fallback, torch_run_plan
from support import random_checkpoint
from test_runtime_artifacts import arts  # noqa: F401


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("defaults") / "dl.pt", "deeplabv3_small",
                             size=(32, 64))


@pytest.mark.parametrize("device,asked,options,expected", [
    # CUDA, nothing asked: fp16 + CUDA graphs (channels_last is cast_plan's CUDA default)
    ("cuda", None, {}, TorchRunPlan("fp16", False, True, True)),
    ("cuda", "fp32", {}, TorchRunPlan("fp32", False, True, False)),      # IEEE: TF32 off
    ("cuda", "tf32", {}, TorchRunPlan("fp32", True, True, False)),       # fp32 weights, TF32 on
    ("cuda", "fp32", {"tf32": True}, TorchRunPlan("fp32", True, True, False)),  # the old option
    ("cuda", "fp16", {"tf32": True}, TorchRunPlan("fp16", False, True, False)),
    ("cuda", None, {"cuda_graphs": False}, TorchRunPlan("fp16", False, False, True)),
    ("cuda", "bf16", {}, TorchRunPlan("bf16", False, True, False)),
    # CPU: unchanged (fp32 eager, no graphs even when asked)
    ("cpu", None, {}, TorchRunPlan("fp32", False, False, True)),
    ("cpu", None, {"cuda_graphs": True, "tf32": True}, TorchRunPlan("fp32", False, False, True)),
    ("cpu", "bf16", {}, TorchRunPlan("bf16", False, False, False)),
])
def test_torch_run_plan(device, asked, options, expected):
    assert torch_run_plan(device, asked, **options) == expected


def test_tf32_is_named_as_tf32_and_refused_on_cpu():
    assert torch_run_plan("cuda", "tf32").name == "tf32"
    assert torch_run_plan("cuda", "fp32").name == "fp32"
    with pytest.raises(CitysegError, match="tf32.*CPU"):
        torch_run_plan("cpu", "tf32")
    # a run precision, not an artifact one: export never offers it
    assert "tf32" in RUN_PRECISIONS and "tf32" not in PRECISIONS


def test_fp16_overflow_falls_back_only_when_fp16_was_the_default():
    default = torch_run_plan("cuda", None)
    assert fp16_fallback(default) == TorchRunPlan("fp32", False, True, True)
    assert fp16_fallback(torch_run_plan("cuda", "fp16")) is None   # asked: the error stands
    assert fp16_fallback(torch_run_plan("cuda", "fp32")) is None


def test_overflowing_parameters_are_found_before_the_cast():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 4, 1))
    with torch.no_grad():
        conv[1].weight[0, 0] = 1e6     # past fp16's 65504
        conv[0].bias[0] = 6.0e4        # inside it
    assert overflowing_parameters(conv, torch.float16) == ["1.weight"]
    assert overflowing_parameters(conv, torch.bfloat16) == []


def test_spec_takes_tf32_and_only_the_torch_runner_honours_it(ckpt, tmp_path):
    assert runtime.parse_model_spec(f"{ckpt}@tf32") == (str(ckpt), "tf32")
    with pytest.raises(CitysegError, match="tf32.*CPU"):
        runtime.load(f"{ckpt}@tf32", device="cpu")
    with pytest.raises(CitysegError, match="onnx artifact runs the precision its graph holds"):
        runtime.check_run_precision(tmp_path / "m.onnx", "onnx", "tf32")


@pytest.mark.parametrize("described,line", [
    ({"backend": "torch", "precision": "fp16", "device": "cuda:0", "channels_last": True,
      "cuda_graphs": True, "compiled": False, "threads": 16},
     "torch fp16 channels_last cuda-graphs on cuda:0 (threads n/a)"),
    ({"backend": "onnxruntime", "precision": "int8", "device": "cpu", "threads": 2,
      "cuda_graph": False}, "onnxruntime int8 on cpu (2 threads)"),
    ({"backend": "openvino", "precision": "fp32", "inference_precision": "bf16", "device": "cpu",
      "ov_device": "CPU", "threads": None}, "openvino bf16 on CPU (default threads)"),
    ({"backend": "torch", "precision": "fp32", "device": "cuda:1", "channels_last": True,
      "cuda_graphs": True, "compiled": "max-autotune", "fallback": "fp16 overflows"},
     "torch fp32 channels_last cuda-graphs torch.compile=max-autotune on cuda:1 (threads n/a); "
     "fp16 overflows"),
])
def test_describe_runner(described, line):
    assert describe_runner(described) == line


def test_cpu_runner_line_names_what_runs(ckpt):
    with runtime.load(ckpt, device="cpu", threads=1) as seg:
        d = seg.describe()
        assert (d["precision"], d["cuda_graphs"], d["default_precision"]) == ("fp32", False, True)
        n = torch.get_num_threads()  # held at 1 while the runner is open (threads=1)
        assert n == 1 and seg.runner() == "torch fp32 on cpu (1 thread)"


def test_bench_prints_the_runner_and_keeps_it_in_json(ckpt, tmp_path, capsys):
    js = tmp_path / "b.json"
    assert run(["bench", str(ckpt), "--warmup", "0", "--iters", "1", "--threads", "1",
                "--json", str(js), "--no-progress"]) == 0
    row = json.loads(js.read_text())["results"][0]
    assert row["runner"] == describe_runner(row["detail"])
    assert f"runner: {row['runner']}" in capsys.readouterr().out.splitlines()


def test_eval_prints_the_runner_and_keeps_it_in_json(ckpt, synth_root, tmp_path, capsys):
    js = tmp_path / "e.json"
    assert run(["eval", str(ckpt), "--data", str(synth_root), "--threads", "1", "--json", str(js),
                "--no-progress"]) == 0
    doc = json.loads(js.read_text())
    assert doc["runner"].startswith("torch fp32 on cpu")
    assert f"runner: {doc['runner']}" in capsys.readouterr().out.splitlines()


def test_segment_and_predict_print_the_runner(ckpt, synth_root, tmp_path, capsys):
    from test_video_support import write_clip

    clip = write_clip(tmp_path / "c.mp4", n=3)
    assert run(["segment", str(clip), "--model", str(ckpt), "--threads", "1",
                "--labels-dir", str(tmp_path / "labels")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("runner: torch fp32 on cpu")
    assert "inference on host" in out[-1]
    assert run(["predict", str(ckpt), "--data", str(synth_root), "--out", str(tmp_path / "p"),
                "--threads", "1", "--no-progress"]) == 0
    assert any(ln.startswith("runner: torch fp32 on cpu") for ln in capsys.readouterr().out.splitlines())


@pytest.mark.parametrize("policy,spinning", [("PASSIVE", False), ("ACTIVE", True)])
def test_onnxruntime_pool_follows_the_openmp_wait_policy(ckpt, tmp_path, monkeypatch, policy, spinning):
    """Under OMP_WAIT_POLICY=PASSIVE (the CLI's default) onnxruntime's pool sleeps too; its
    spinning cost the int8 runner 2.8x on a loaded 2-CPU machine (bench/results/)."""
    from cityseg_deploy.export import export

    onnx = export(ckpt, format="onnx", out=tmp_path / "m.onnx", verify=False, log=None).path
    monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    with runtime.load(onnx, threads=1) as seg:
        try:
            entry = seg.session_options.get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # not set: onnxruntime's default, which spins
            entry = None
        assert (entry == "0") is (not spinning)
        assert seg.describe()["spinning"] is spinning
        assert seg.runner() == "onnxruntime fp32 on cpu (1 thread)"
        # a sleeping pool hands out work in dynamic blocks (a late thread holds up less of a loop)
        assert _config(seg, "session.dynamic_block_base") == (None if spinning else "4")
        assert seg.describe()["dynamic_block_base"] == (0 if spinning else 4)
    with runtime.load(onnx, threads=1, dynamic_block_base=0) as seg:  # --runner-option turns it off
        assert _config(seg, "session.dynamic_block_base") is None


def _config(seg, key: str) -> str | None:
    """A session config entry as the runner set it, None where unset."""
    try:
        return seg.session_options.get_session_config_entry(key)
    except RuntimeError:
        return None


def test_openvino_runner_line_names_the_threads_it_compiled_with(arts):
    """The line reads the count back from the compiled model (it said 'default threads' while
    the runner had set one per core)."""
    from cityseg_deploy.system.threads import default_threads

    with runtime.load(arts["ov"]) as seg:
        n = default_threads()
        assert seg.runner().endswith(f"on CPU ({n} thread{'' if n == 1 else 's'})")
    with runtime.load(arts["ov"], threads=1) as seg:
        assert seg.runner().endswith("on CPU (1 thread)")
