"""The README is a contract: every shell example in README.md and docs/*.md runs as written.

Examples are the fenced ```console blocks (``$ `` lines are commands, the lines under them the
output they must print) and ```bash blocks (every line a command).  Conventions in the Markdown:

- ``<!-- readme-test: skip REASON -->`` on the line(s) before a block: the block is not run (a
  GPU, TensorRT, a download, real Cityscapes, an interactive key press); the skip names REASON.
  Its ``cityseg`` commands are still parsed against the CLI (options, choices, types).
- An output line ``…`` stands for any lines; a line ending in ``…`` matches by its start.
- ``# exit status N`` at the end of an output line: the command must exit with N (else 0).
- Numbers are compared as numbers-at-that-place (timings, scores and sizes vary by machine), the
  words, names, paths and order of the lines must match.

The fast part (default suite) parses every command against ``cityseg``'s real option parser and
checks that the examples are runnable in order (every file a command reads was made by an earlier
example).  The slow part runs them all, in order, in one temporary folder that stands for the
repository root (``training/``, ``export/`` and ``bench/`` linked in), on the synthetic data the
README itself makes.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest

from cityseg_deploy.cli import app

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*readme-test:\s*(\w[\w-]*)\s*(.*?)\s*-->")
STATUS = re.compile(r"\s+#\s*exit status (\d+)\s*$")
NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?")
ELLIPSIS = "…"
#: Output options: their values are written, not read (for the runnable-in-order check).
WRITES = {"--out", "-o", "--json", "--md", "--plot", "--labels-dir"}


@dataclass
class Example:
    doc: str
    line: int
    command: str
    expected: list[str] = field(default_factory=list)
    status: int = 0
    skip: str | None = None

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def parse_examples(path: Path) -> list[Example]:
    """Every command of the console/bash blocks of one Markdown file, in order."""
    lines = path.read_text().splitlines()
    doc = path.relative_to(REPO).as_posix()
    examples: list[Example] = []
    skip: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER.search(line)
        if marker:
            kind, reason = marker.groups()
            if kind != "skip" or not reason:
                raise ValueError(f"{doc}:{i + 1}: marker must be '<!-- readme-test: skip REASON -->'")
            skip = reason
            i += 1
            continue
        fence = line.strip()
        if not fence.startswith("```"):
            i += 1
            continue
        lang = fence[3:].strip()
        body_start = i + 1
        j = body_start
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        body = lines[body_start:j]
        if lang in ("console", "bash"):
            examples += _block_examples(doc, body_start + 1, body, lang, skip)
        skip = None
        i = j + 1
    return examples


def _block_examples(doc: str, first_line: int, body: list[str], lang: str, skip: str | None
                    ) -> list[Example]:
    out: list[Example] = []
    k = 0
    indent = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
    body = [b[indent:] for b in body]
    while k < len(body):
        text = body[k]
        is_command = text.startswith("$ ") if lang == "console" else (
            text.strip() and not text.lstrip().startswith("#"))
        if not is_command:
            if lang == "console" and out:
                out[-1].expected.append(text)
            k += 1
            continue
        start = k
        command = text[2:] if lang == "console" else text
        while command.rstrip().endswith("\\") and k + 1 < len(body):
            k += 1
            command = command.rstrip()[:-1] + " " + body[k].strip()
        out.append(Example(doc, first_line + start, command.strip(), skip=skip))
        k += 1
    for ex in out:
        expected = []
        for text in ex.expected:
            m = STATUS.search(text)
            if m:
                ex.status = int(m.group(1))
                text = text[:m.start()]
            if text.strip():
                expected.append(text.rstrip())
        ex.expected = expected
    return out


ALL = [ex for doc in DOCUMENTS for ex in parse_examples(doc)]


# --------------------------------------------------------------------------- matching output
def _norm(text: str) -> str:
    return " ".join(NUMBER.sub("0", text).split())


def missing_lines(expected: list[str], output: str) -> list[str]:
    """Expected lines not found, in order, in ``output`` (``…`` = any lines; ``x…`` = starts with x)."""
    got = [_norm(l) for l in re.split(r"[\r\n]+", output) if l.strip()]
    pos, missing = 0, []
    for want in expected:
        if want.strip() == ELLIPSIS:
            continue
        prefix = want.rstrip().endswith(ELLIPSIS)
        w = _norm(want.rstrip().rstrip(ELLIPSIS))
        for k in range(pos, len(got)):
            if (got[k].startswith(w) if prefix else got[k] == w):
                pos = k + 1
                break
        else:
            missing.append(want)
    return missing


def test_matching_rules_are_strict_about_words_and_order():
    out = "epoch 1/2: loss 2.96 (best)\nwrote a.pt\nnext: cityseg eval a.pt"
    assert missing_lines(["epoch 1/4: loss 9.1 (best)", ELLIPSIS, "next: cityseg…"], out) == []
    assert missing_lines(["wrote b.pt"], out) == ["wrote b.pt"]
    assert missing_lines(["next: cityseg eval a.pt", "wrote a.pt"], out) == ["wrote a.pt"]


# --------------------------------------------------------------------------- parsing commands
def simple_commands(command: str) -> list[list[str]]:
    """A shell line → its simple commands as argv lists (split at && || ; |, comments dropped)."""
    text = command.replace("$CITYSCAPES", "CITYSCAPES")
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set(";&|"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    if current:
        commands.append(current)
    return commands


def cityseg_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``cityseg`` (or ``torchrun ... -m cityseg_deploy``), or None."""
    if argv and argv[0] == "cityseg":
        return argv[1:]
    if argv and argv[0] in ("torchrun", "python3", "python") and "-m" in argv:
        k = argv.index("-m")
        if k + 1 < len(argv) and argv[k + 1] == "cityseg_deploy":
            return argv[k + 2:]
    return None


def parse_with_click(args: list[str]) -> click.Command:
    """Parse ``args`` with the real CLI, without running the command: unknown options, missing
    required ones, bad choices and types raise click.UsageError."""
    command: click.Command = app
    ctx = None
    while isinstance(command, click.Group):
        if not args or args[0].startswith("-"):
            raise click.UsageError(f"no sub-command in {args}")
        ctx = click.Context(command, info_name=command.name, parent=ctx)
        sub = command.get_command(ctx, args[0])
        if sub is None:
            raise click.UsageError(f"no such command {args[0]!r}")
        command, args = sub, args[1:]
    command.make_context(command.name, list(args), parent=ctx)
    return command


CITYSEG_COMMANDS = [(ex, argv) for ex in ALL for simple in simple_commands(ex.command)
                    if (argv := cityseg_argv(simple)) is not None]


def test_the_docs_hold_examples_of_every_command():
    assert len(ALL) >= 30, [ex.id for ex in ALL]
    named = {argv[0] for _, argv in CITYSEG_COMMANDS} | {" ".join(argv[:2]) for _, argv in CITYSEG_COMMANDS}
    for name in ("data synth", "data check", "models", "train", "export", "eval", "predict", "check",
                 "bench", "segment", "quickstart", "convert-weights", "optimize"):
        assert name in named, name


@pytest.mark.parametrize("example,args", CITYSEG_COMMANDS,
                         ids=[f"{ex.id}:{a[0]}" for ex, a in CITYSEG_COMMANDS])
def test_every_documented_cityseg_command_parses(example, args):
    """Options, choices and types as the CLI has them, for run and skipped examples alike."""
    try:
        parse_with_click(args)
    except click.exceptions.Exit:
        pass  # --help
    except click.UsageError as exc:
        pytest.fail(f"{example.id}: cityseg {' '.join(args)}: {exc.format_message()}")


def _inputs(argv: list[str]) -> list[str]:
    """Relative paths a command reads (positional arguments and --data-like values)."""
    paths, skip_next = [], False
    for k, arg in enumerate(argv):
        if skip_next:
            skip_next = False
            continue
        if arg in WRITES:
            skip_next = True
            continue
        if arg.startswith("-"):
            continue
        if " " not in arg and ("/" in arg or re.search(r"\.(pt|onnx|pt2|engine|xml)$", arg)) and "*" not in arg \
                and not arg.startswith(("/", "$", "rtsp:", "http")) and "=" not in arg:
            paths.append(arg)
    return paths


def test_examples_are_runnable_in_order():
    """Every file a run example reads was made (or shown) by an earlier example: the chain
    starts from nothing but the repository."""
    seen = "training/ export/ bench/ " + " ".join(p.name for p in REPO.iterdir())
    problems = []
    for ex in ALL:
        for simple in simple_commands(ex.command):
            args = cityseg_argv(simple)
            if ex.skip is None and args is not None:
                for path in _inputs(args):
                    root = path.split("/")[0]
                    if path not in seen and root + "/" not in seen.replace(path, ""):
                        problems.append(f"{ex.id}: {path} is read before any example makes it")
            seen += " " + " ".join(simple)  # what this command names exists for the next one
        seen += " " + " ".join(ex.expected)
    assert not problems, "\n".join(problems)


def test_skips_say_why():
    for ex in ALL:
        if ex.skip is not None:
            assert len(ex.skip.split()) >= 2, f"{ex.id}: give the skip a reason"


def test_smoke_profile_has_what_its_description_says():
    import yaml

    doc = yaml.safe_load((REPO / "export" / "smoke.yaml").read_text())
    pairs = {(e["format"], e["precision"]) for e in doc["exports"]}
    assert {"onnx", "openvino", "aoti"} == {f for f, _ in pairs}
    assert {("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"), ("openvino", "fp32"),
            ("openvino", "int8"), ("aoti", "fp32")} <= pairs
    for word in ("ONNX", "OpenVINO", "AOTInductor"):
        assert word in doc["description"]


# --------------------------------------------------------------------------- running them
@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """An empty folder standing for the repository root: the YAML folders linked in, no data."""
    root = tmp_path_factory.mktemp("readme")
    for name in ("training", "export", "bench"):
        (root / name).symlink_to(REPO / name)
    return root


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHON"] = sys.executable
    env.setdefault("OMP_NUM_THREADS", "2")
    env["COLUMNS"] = "200"
    return env


PRELUDE = ('cityseg() { "$PYTHON" -m cityseg_deploy "$@"; }\n'
           'python3() { "$PYTHON" "$@"; }\n')


@pytest.mark.slow
@pytest.mark.parametrize("example", ALL, ids=[ex.id for ex in ALL])
def test_example_runs_and_prints_what_the_docs_show(example, workspace):
    if example.skip is not None:
        pytest.skip(example.skip)
    proc = subprocess.run(["bash", "-c", PRELUDE + example.command], cwd=workspace,
                          env=_environment(), capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == example.status, (
        f"{example.id}: {example.command}\nexit {proc.returncode}, documented {example.status}\n"
        f"{output[-3000:]}")
    missing = missing_lines(example.expected, output)
    assert not missing, (f"{example.id}: {example.command}\nnot printed (in this order):\n"
                         + "\n".join(missing) + f"\n--- output ---\n{output[-4000:]}")
