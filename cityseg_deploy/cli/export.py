"""``cityseg export MODEL --format onnx|trt|aoti|openvino|triton [--precision ...]`` (DESIGN.md's CLI).

Thin: parse, call :func:`cityseg_deploy.export.export` once per requested artifact (one, or the
list of a ``--profile`` YAML), print a success line per artifact and the next commands.
"""
from __future__ import annotations

from pathlib import Path

import click

from ._app import app, parse_size
from .options import option
from ..errors import CitysegError, short_repr
from ..export import format_table
from ..export.formats import get_format
from ..export.options import BY_NAME, OPTIONS, Option, check_applies, check_value, closest, share

PROFILE_KEYS = {o.name for o in OPTIONS}  # every export option is a profile key


def _click_option(opt: Option):
    """The click option of one row of the option table (``None``: not given, so a profile's
    value or the export's default holds)."""
    types = {"int": click.IntRange(min=opt.low, max=opt.high), "float": float,
             "path": click.Path()}
    decls = [*(opt.decls or ("--" + opt.name.replace("_", "-"),)), opt.name]
    if opt.kind == "flag":
        return click.option(*decls, is_flag=True, default=None, help=opt.help)
    if opt.kind == "bool" and len(decls) == 2 and "/" not in decls[0]:  # --no-verify
        return click.option(*decls, flag_value=not opt.default, default=None, help=opt.help)
    return click.option(*decls, type=types.get(opt.kind), default=None, help=opt.help)


def export_options(command):
    """Attach every command-line row of the option table, in the table's order."""
    for opt in reversed([o for o in OPTIONS if o.cli]):
        command = _click_option(opt)(command)
    return command


def _keys(where: str, mapping: dict) -> dict:
    if not all(isinstance(k, str) for k in mapping):
        raise CitysegError(f"{where}: every key must be a name, got {[short_repr(k) for k in list(mapping)[:5]]}")
    return {k.replace("-", "_"): v for k, v in mapping.items()}


def read_profile(path: str) -> list[dict]:
    """A profile: common keys plus ``exports: [{format, precision, ...}, ...]``, every key known
    and of its type (a bad profile fails here, naming the key, before any export starts)."""
    from ..resources import resolve
    from ..yamlfile import read_yaml

    p = resolve("profile", path)  # a path, or a bare name of a shipped profile (smoke, cpu, ...)
    where = f"--profile {p}"
    doc = read_yaml(p, where)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise CitysegError(f"{where}: expected a mapping with an 'exports' list")
    doc = {k: v for k, v in _keys(where, doc).items() if k != "description"}
    entries = doc.pop("exports", None) or [{}]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CitysegError(f"{where}: 'exports' must be a list of mappings ({{format: onnx, ...}})")
    entries = [_keys(where, e) for e in entries]
    unknown = sorted((set(doc) | {k for e in entries for k in e}) - PROFILE_KEYS)
    if unknown:
        raise CitysegError(f"{where}: unknown keys {short_repr(unknown, 200)}{closest(unknown[0][:100])} "
                           f"(known: {sorted(PROFILE_KEYS)})")
    doc = _typed(where, doc)
    jobs = share([_typed(where, e) for e in entries], doc, over=False)
    for k, job in enumerate(jobs):  # every export's keys apply to it, before any export starts
        fmt, precision = get_format(job.get("format") or "onnx").name, str(job.get("precision") or "fp32")
        try:
            check_applies(fmt, precision.lower(), job)
        except CitysegError as exc:
            raise CitysegError(f"{where}: export {k + 1} ({fmt} {precision}): {exc}") from None
    return jobs


def _typed(where: str, keys: dict) -> dict:
    """Each key's value of its type (a size string parsed), None values dropped."""
    out = {}
    for key, value in keys.items():
        if value is None:
            continue
        value = check_value(where, key, value)
        out[key] = parse_size(value) if BY_NAME[key].kind == "size" and isinstance(value, str) else value
    return out


def _epilog() -> str:
    """The format table and the profile-only keys, from the format and option tables."""
    renamed = ", ".join(f"{o.name} for {o.flag}" for o in OPTIONS
                        if o.cli and o.flag != "--" + o.name.replace("_", "-"))
    extra = "; ".join(f"{o.name} ({o.help} [{o.default}])" for o in OPTIONS if not o.cli)
    return (f"Formats:\n\n\b\n{format_table()}\n\nProfile keys (--profile YAML): every option "
            f"above, spelt with _ (calib_images; {renamed}), and {extra}.")


@app.command("export", epilog=_epilog())
@option("max_pixels")
@click.argument("model", type=click.Path())
@export_options
@click.option("--profile", default=None,
              help="export profile: a YAML path or a shipped name (smoke, cpu, edge, tensorrt; see export/)")
@option("trust_code")
def export_cmd(model: str, profile: str | None, **options) -> None:
    """Export MODEL (a cityseg checkpoint) to ONNX, TensorRT, AOTInductor, OpenVINO or a Triton
    model repository.

    Precision lives in the exported graph (fp16 casts, int8 Q/DQ calibrated on --calib-data);
    every artifact is checked against PyTorch and carries the model's metadata.
    """
    from ..export import export

    given = {k: v for k, v in options.items() if v is not None}
    if "size" in given:
        given["size"] = parse_size(given["size"])
    jobs = read_profile(profile) if profile else [{}]
    if len(jobs) > 1 and "out" in given:
        raise CitysegError("--out names one file; a profile with several exports writes each next "
                           "to MODEL (drop --out)")
    results = []
    for kwargs in share(jobs, given):
        kwargs.setdefault("format", "onnx")
        result = export(model, log=click.echo, **kwargs)
        for r in result.intermediates + [result]:
            _echo_success(r)
        results.append(result)
    click.echo("next:")
    root = given.get("data") or given.get("calib_data") or jobs[0].get("data")
    for r in results:
        for line in _next_lines(r, model, root):
            click.echo(f"  {line}")


def _echo_success(r) -> None:
    """``export success: ...`` and, for a format whose metadata is a sidecar, where it is."""
    from .. import formats
    from ..artifacts import artifact_kind, sidecar_path

    if formats.get(r.format).metadata == "repository":
        click.echo(f"export success: {r.format} → {r.path}")
        return
    click.echo(f"export success: {r.format} {r.precision} → {r.path} "
               f"({r.seconds:.1f} s, {r.size_mb:.1f} MB)")
    side = sidecar_path(r.path)
    if formats.get(artifact_kind(Path(r.path))).metadata == "sidecar" and side.is_file():
        click.echo(f"  metadata: {side} (classes, palette, normalisation, io; keep it next "
                   f"to {Path(r.path).name})")


def _next_lines(r, model: str, root) -> list[str]:
    from .. import formats
    from ..export import next_commands

    if formats.get(r.format).metadata == "repository":  # a Triton repository: serve it
        repo = Path(r.path).parent.resolve()
        return [f"docker run --rm -p 8000:8000 -p 8001:8001 -v {repo}:/models "
                f"nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models"]
    return next_commands(r, model, root)
