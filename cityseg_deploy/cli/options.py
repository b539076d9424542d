"""The options several commands share, declared once: flag, type, validation, help.

Why: ``--threads`` was declared four ways (one without a lower bound), ``--batch`` five,
``--precision`` was a Choice in one place and free text in another.  A command takes a row with
``@option("threads")`` (``default=``/``show_default=`` may differ per command; the flag, the
check and the help text may not).  ``cityseg export`` keeps its own table
(``export/options.py``: options that apply per format and precision, also profile keys).

``--runner-option KEY=VALUE`` (repeatable) reaches the runner's keyword options (``cuda_graphs``,
``compile``, OpenVINO ``mode``/``streams`` ...): :func:`runner_options` parses the values as YAML
scalars and checks each name against the model's backend (``runtime.check_options``: a close
spelling is suggested) before any work starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import click

from ..errors import CitysegError
from ..precision import RUN_PRECISIONS
from ._app import parse_size


def _size(ctx, param, value):
    return parse_size(value) if isinstance(value, str) else value


def _sizes(ctx, param, value):
    return [parse_size(v) for v in value.split(",")] if value else [None]


def _batches(ctx, param, value):
    return int_list(value, "--batch")


def report_path(ctx, param, value):
    """A report's destination checked before the command runs (a folder, or a path under a file,
    failed at the final write, after all the work)."""
    if value:
        from ..fileio import check_output_file

        check_output_file(value, option=param.opts[0])
    return value


def _trust_code(ctx, param, value):
    if value:  # the process-wide switch (trust.py); each untrusted file loaded is named in a warning
        from ..trust import allow_untrusted

        allow_untrusted()
    return value


def _max_pixels(ctx, param, value):
    from ..images_header import set_max_pixels

    set_max_pixels(value)


@dataclass(frozen=True)
class Shared:
    """One shared option: click declarations and keyword arguments, help included."""

    decls: tuple[str, ...]
    help: str
    kw: dict[str, Any] = field(default_factory=dict)


SHARED: dict[str, Shared] = {
    "threads": Shared(("--threads",), "CPU threads of the model runner (default: one per core this "
                      "process may use)", {"type": click.IntRange(min=1), "default": None}),
    "device": Shared(("--device",), "cpu, cuda or cuda:N", {"default": "cpu", "show_default": True}),
    "batch": Shared(("--batch",), "images per inference call",
                    {"type": click.IntRange(min=1), "default": 1, "show_default": True}),
    "batches": Shared(("--batch", "batches"), "images per inference call: N, or N,N,... for a row each",
                      {"default": "1", "show_default": True, "callback": _batches}),
    "precision": Shared(("--precision",), "run precision where the backend chooses it (or MODEL@bf16)",
                        {"type": click.Choice(RUN_PRECISIONS), "default": None}),
    "size": Shared(("--size",), "size HxW (height x width)",
                   {"default": None, "metavar": "HxW", "callback": _size}),
    "sizes": Shared(("--size", "sizes"), "input HxW, or HxW,HxW,... for a row each (default: each "
                    "model's size)", {"default": None, "metavar": "HxW", "callback": _sizes}),
    "json": Shared(("--json", "json_path"), "write the JSON report here",
                   {"default": None, "metavar": "FILE", "callback": report_path}),
    "md": Shared(("--md", "md_path"), "write the Markdown report here",
                 {"default": None, "metavar": "FILE", "callback": report_path}),
    "split": Shared(("--split",), "dataset split", {"default": "val", "show_default": True}),
    # every command that loads a model; not passed to the command (it sets trust.py's switch)
    "trust_code": Shared(("--trust-code",), "load .pt2 packages and TensorRT engines that this "
                         "machine's 'cityseg export' did not write (they run native code when loaded)",
                         {"is_flag": True, "expose_value": False, "callback": _trust_code}),
    # every command that decodes images: the bound each image's header is checked against
    # before decoding (images_header.py); set process-wide, so it takes no function parameter
    "max_pixels": Shared(("--max-pixels",), "refuse an image whose header declares more pixels, "
                         "before decoding it (default 64000000; a decompression bomb stops here)",
                         {"type": click.IntRange(min=1), "default": None, "expose_value": False,
                          "is_eager": True, "callback": _max_pixels}),
    "runner_option": Shared(("--runner-option", "runner_option"),
                            "KEY=VALUE for the model's runner (repeatable; e.g. cuda_graphs=true, "
                            "mode=throughput, streams=2); a name the backend does not take is refused",
                            {"multiple": True, "metavar": "KEY=VALUE"}),
}


def option(name: str, **overrides: Any) -> Callable:
    """The click decorator of shared option ``name``; ``overrides`` may change ``default`` and
    ``show_default`` only (one flag, one check, one help text everywhere)."""
    spec = SHARED[name]
    bad = set(overrides) - {"default", "show_default"}
    if bad:
        raise TypeError(f"option {name!r}: only default/show_default differ per command, not {sorted(bad)}")
    return click.option(*spec.decls, help=spec.help, **{**spec.kw, **overrides})


def model_run_options(*, precision: bool = False, batch: bool = False) -> Callable:
    """The options every command that runs a model takes, in one order: ``--device``
    [``--precision``], ``--threads``, ``--trust-code`` [``--batch``], ``--runner-option``.
    Why a group: a new run command cannot forget the trust switch or the runner options."""
    names = ["device", *(["precision"] if precision else []), "threads", "trust_code",
             *(["batch"] if batch else []), "runner_option"]

    def apply(fn: Callable) -> Callable:
        for name in reversed(names):  # click lists options in decorator order, top down
            fn = option(name)(fn)
        return fn
    return apply


def int_list(value: str | None, what: str) -> list[int]:
    """``"1,4"`` → ``[1, 4]``; each at least 1."""
    if not value:
        return [1]
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise CitysegError(f"{what} {value!r}: expected integers separated by commas, e.g. 1,4") from None
    if not out or any(v < 1 for v in out):
        raise CitysegError(f"{what} {value!r}: values must be >= 1")
    return out


def parse_runner_options(values: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``("cuda_graphs=true", "streams=2")`` → ``{"cuda_graphs": True, "streams": 2}`` (YAML scalars,
    read by the project's one YAML reader; what it refuses stays the plain text)."""
    from ..yamlfile import parse_yaml

    out: dict[str, Any] = {}
    for item in values or ():
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise CitysegError(f"--runner-option {item!r}: expected KEY=VALUE, e.g. cuda_graphs=true")
        try:
            value = parse_yaml(text, "--runner-option") if text.strip() else ""
        except CitysegError:
            value = text
        if isinstance(value, (dict, list)) or value is None:
            value = text  # a plain string, not a structure
        out[key] = value
    return out


def runner_options(values: tuple[str, ...] | list[str], *models: str) -> dict[str, Any]:
    """Parsed ``--runner-option`` values, each checked against the runner of every model in
    ``models`` (a path or ``path@precision``), before any work starts."""
    options = parse_runner_options(values)
    if options:
        from pathlib import Path

        from .. import runtime
        from ..artifacts import artifact_kind

        for model in models:
            path = runtime.parse_model_spec(model)[0]
            runtime.check_options(path, artifact_kind(Path(path)), options)
    return options


__all__ = ["SHARED", "Shared", "int_list", "model_run_options", "option", "parse_runner_options", "runner_options"]
