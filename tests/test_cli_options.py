"""cli/options.py: the shared options exist once (one flag, one check, one help), and
``--runner-option KEY=VALUE`` reaches the runner, checked by name before any work."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from cityseg_deploy.cli import app, run
from cityseg_deploy.cli.options import SHARED, parse_runner_options
from cityseg_deploy.models.checkpoint import ModelMeta, save_checkpoint
from cityseg_deploy.models.registry import build_model

PACKAGE = Path(__file__).resolve().parents[1] / "cityseg_deploy"
RUN_COMMANDS = ("predict", "eval", "check", "bench", "segment", "serve")


@pytest.fixture()
def ckpt(tmp_path):
    torch.manual_seed(0)
    meta = ModelMeta.for_arch("unet_small", input_size=(32, 64))
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("unet_small", **meta.arch_args).eval(), meta)
    return path


def test_threads_is_declared_once_in_the_source():
    hits = [f"{p.relative_to(PACKAGE)}" for p in PACKAGE.rglob("*.py")
            if re.search(r"""["']--threads["']""", p.read_text())]
    assert hits == ["cli/options.py"]


@pytest.mark.parametrize("name", ["threads", "device", "precision", "json", "md", "runner_option"])
def test_a_shared_option_has_one_help_text_everywhere(name):
    flag = SHARED[name].decls[0]
    helps = {cmd: next((p.help for p in app.commands[cmd].params if flag in getattr(p, "opts", ())), None)
             for cmd in app.commands}
    used = {cmd: h for cmd, h in helps.items() if h is not None and cmd != "export"}
    assert used and set(used.values()) == {SHARED[name].help}, used


def test_every_command_that_runs_a_model_takes_runner_options():
    for cmd in RUN_COMMANDS:
        assert any("--runner-option" in p.opts for p in app.commands[cmd].params), cmd


def test_runner_option_values_are_yaml_scalars():
    assert parse_runner_options(["cuda_graphs=true", "streams=2", "mode=throughput", "x=1.5"]) == {
        "cuda_graphs": True, "streams": 2, "mode": "throughput", "x": 1.5}


@pytest.mark.parametrize("argv", [["predict", "{m}", "--images", "{m}", "--out", "{o}"],
                                  ["bench", "{m}"], ["segment", "{m}", "--model", "{m}", "--out", "{o}/x.mp4"]])
def test_misspelt_runner_option_is_refused_with_the_close_spelling(ckpt, tmp_path, capsys, argv):
    argv = [a.format(m=ckpt, o=tmp_path / "out") for a in argv]
    assert run([*argv, "--runner-option", "cuda_graph=true", "--no-progress"]
               if argv[0] != "segment" else [*argv, "--runner-option", "cuda_graph=true"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'cuda_graph'" in err and "did you mean 'cuda_graphs'" in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_runner_option_reaches_the_runner(ckpt, tmp_path, capsys):
    import json

    out = tmp_path / "b.json"
    assert run(["bench", str(ckpt), "--iters", "1", "--warmup", "0", "--no-progress", "--json", str(out),
                "--runner-option", "channels_last=false"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed  # bench says where it wrote, like check and eval
    row = json.loads(out.read_text())["results"][0]
    assert row["status"] == "ok" and row["detail"].get("channels_last") is False, row["detail"]
