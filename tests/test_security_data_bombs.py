"""Small files that describe enormous values end as one ``error:`` line, fast (issue 27 items 4, 5).

A YAML alias repeats a node by reference and a pickle can share one list between many places, so
1.5 KB describe 9^12 list items and 270 KB a 2^60-element nested list.  Loading either is instant;
what used to hang was the first full walk (an error message's ``{value!r}``, ``dataclasses.asdict``,
``json.dumps``).  Each case runs the real CLI in a child process under a memory limit and a
timeout: a hang or a MemoryError fails the test instead of the machine.
"""
from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityseg_deploy.errors import CitysegError, short_repr
from cityseg_deploy.models import ModelMeta, build_model, save_checkpoint
from cityseg_deploy.models.checkpoint import MAX_META_NODES, check_plain
from cityseg_deploy.yamlfile import parse_yaml

MEMORY_LIMIT = 4 << 30  # torch's import maps ~1.5 GB; the bombs wanted far more than this
TIMEOUT_S = 120  # the child imports torch on a loaded 2-core machine; a bomb never finishes


def _cli(*argv: str) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run([sys.executable, "-m", "cityseg_deploy", *map(str, argv)], capture_output=True,
                          text=True, timeout=TIMEOUT_S, preexec_fn=limit)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-800:])
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr[-800:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and len(lines[0]) < 600, proc.stderr[-800:]
    return lines[0]


def alias_bomb(levels: int = 24, width: int = 9) -> str:
    """A flow list whose last item is ``width ** levels`` (9^24) strings by reference (about 1.4 KB)."""
    items = ["&a0 [" + ", ".join(["lol"] * width) + "]"]
    for k in range(1, levels):
        items.append(f"&a{k} [" + ", ".join([f"*a{k - 1}"] * width) + "]")
    return "[" + ", ".join(items) + "]"


def test_alias_bomb_is_about_a_kilobyte_and_refused_by_the_reader():
    text = f"exports:\n  - format: onnx\n    opset: {alias_bomb()}\n"
    assert 1000 < len(text) < 2000
    with pytest.raises(CitysegError, match=r"x\.yaml: YAML aliases \(\*a0\) are not allowed .*line 3"):
        parse_yaml(text, "x.yaml")
    # A merge key is an alias too; anchors alone are harmless but nothing needs them either.
    with pytest.raises(CitysegError, match="aliases"):
        parse_yaml("base: &b {lr: 1}\nrun:\n  <<: *b\n", "x.yaml")
    assert parse_yaml("a: &x 1\n", "x.yaml") == {"a": 1}


@pytest.mark.parametrize("text, why", [
    ("[" * 200 + "]" * 200, "nested more than"),
    ("opset: " + "9" * 5000, "cannot read"),
    ("opset: [1, 2\n", "not valid YAML"),
])
def test_other_pathological_yaml_is_one_error(text, why):
    with pytest.raises(CitysegError, match=why):
        parse_yaml(text, "p.yaml")


def test_profile_alias_bomb_is_one_error_line(tmp_path):
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("unet_small"), ModelMeta.for_arch("unet_small", input_size=[64, 128]))
    profile = tmp_path / "bomb.yaml"
    profile.write_text(f"exports:\n  - format: onnx\n    opset: {alias_bomb()}\n")
    line = _one_error_line(_cli("export", ckpt, "--profile", profile))
    assert "bomb.yaml" in line and "aliases" in line, line
    assert not (tmp_path / "m.onnx").exists()


def test_recipe_alias_bomb_is_one_error_line(tmp_path, synth_root):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(f"model: unet_small\nepochs: 1\nbatch_size: 1\nlr: 0.001\ntrain_size: {alias_bomb()}\n")
    line = _one_error_line(_cli("train", "--recipe", recipe, "--data", synth_root, "--out", tmp_path / "run"))
    assert "bomb.yaml" in line and "aliases" in line, line


def test_bounded_repr_of_a_bomb_value_is_short_and_quick():
    """The values that reach messages without YAML (a --set value, a checkpoint field)."""
    x: list = ["lol"]
    for _ in range(60):
        x = [x, x]
    assert len(short_repr(x)) <= 80 and len(short_repr({"k": x}, 200)) <= 200
    assert short_repr(10 ** 5000).endswith("...") or len(short_repr(10 ** 5000)) <= 80


def _shared_bomb(depth: int = 60) -> list:
    x: list = [0]
    for _ in range(depth):
        x = [x, x]
    return x


def _bomb_checkpoint(path: Path, field: str) -> Path:
    """A real unet_small checkpoint whose metadata ``field`` holds a 2^60-element shared list."""
    meta = ModelMeta.for_arch("unet_small", input_size=[64, 128])
    save_checkpoint(path, build_model("unet_small"), meta)
    plain_size = path.stat().st_size
    payload = torch.load(path, weights_only=True)
    if field == "arch_args":
        payload["meta"]["arch_args"]["bomb"] = _shared_bomb()
    else:
        payload["meta"]["extra"] = {"val": _shared_bomb()}
    torch.save(payload, path)
    assert path.stat().st_size - plain_size < 10_000  # the bomb itself is a few KB
    return path


@pytest.mark.parametrize("field", ["arch_args", "extra"])
@pytest.mark.parametrize("command", ["eval", "export"])
def test_shared_reference_bomb_in_a_checkpoint_is_one_error_line(field, command, tmp_path, synth_root):
    ckpt = _bomb_checkpoint(tmp_path / "bomb.pt", field)
    argv = (["eval", ckpt, "--data", synth_root, "--no-progress"] if command == "eval"
            else ["export", ckpt, "--format", "onnx", "--no-verify"])
    line = _one_error_line(_cli(*argv))
    assert "bomb.pt" in line and f"metadata field '{field}'" in line and "more than" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.pt"]


def test_check_plain_counts_every_visit():
    with pytest.raises(CitysegError, match="more than"):
        check_plain(_shared_bomb(), "f.pt", "extra")
    with pytest.raises(CitysegError, match="nested more than"):
        deep: list = []
        for _ in range(100):
            deep = [deep]
        check_plain(deep, "f.pt", "extra")
    with pytest.raises(CitysegError, match="holds a Tensor"):
        check_plain({"w": torch.zeros(1)}, "f.pt", "arch_args")
    check_plain({"recipe": {"lr": 1e-3, "size": [64, 128], "name": "x" * 100}, "val": None},
                "f.pt", "extra")


plain = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats() | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=6)
                     | st.dictionaries(st.text(max_size=8), kids, max_size=6), max_leaves=200)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=plain, fanout=st.integers(1, 4), depth=st.integers(0, 40))
def test_check_plain_accepts_or_refuses_generated_values(value, fanout, depth):
    """Generated values, some wrapped in shared-reference towers: accepted, or one CitysegError."""
    for _ in range(depth):
        value = [value] * fanout
    try:
        check_plain(value, "f.pt", "extra")
    except CitysegError as exc:
        assert "metadata field 'extra'" in str(exc) and depth > 0, exc  # plain data alone passes
    else:
        assert depth <= 32 and fanout ** depth <= MAX_META_NODES


yaml_tokens = st.sampled_from(["&a ", "*a", "&b ", "*b", "[", "]", "{", "}", ": ", ", ", "\n", "  ", "- ",
                               "exports", "format", "onnx", "opset", "model", "epochs", "lr", "1", "-3",
                               "1e999", "9" * 30, "null", "true", "'x'", "\"\\u0000\"", "!!str ", "? ",
                               "<<: ", "size", "rows", "name", "arch", "unet_small", "#", "\t", "\\"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(text=st.lists(yaml_tokens, max_size=40).map("".join))
def test_generated_yaml_is_read_or_refused_by_every_reader(text, tmp_path):
    """Generated documents (aliases, merge keys, tags, odd scalars) through the profile, recipe
    and suite readers: each returns, or raises CitysegError — no other exception."""
    from cityseg_deploy.bench.suite import load_suite
    from cityseg_deploy.cli.export import read_profile
    from cityseg_deploy.training.recipe import load_recipe

    path = tmp_path / "doc.yaml"
    path.write_text(text)
    for reader in (read_profile, load_recipe, load_suite):
        try:
            reader(str(path))
        except CitysegError:
            pass  # refused with one message: fine; any other exception fails the test
