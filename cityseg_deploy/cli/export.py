"""``cityseg export MODEL --format onnx|trt|aoti|openvino [--precision ...]`` (DESIGN.md's CLI).

Thin: parse, call :func:`cityseg_deploy.export.export` once per requested artifact (one, or the
list of a ``--profile`` YAML), print a success line per artifact and the next commands.
"""
from __future__ import annotations

from pathlib import Path

import click

from ._app import app, parse_size
from ..errors import CitysegError, first_line

PROFILE_KEYS = {"format", "precision", "out", "size", "batch", "dynamic", "calib_data", "data",
                "calib_images", "keep_fp32", "preprocess", "argmax", "opset", "int8_method", "int8_layout",
                "device", "verify", "verify_images", "workspace_gb", "opt_level",
                "calibration", "max_drop", "val_data", "strict", "max_trials"}


# The type each profile key must have (checked when the profile is read, naming the key).
_STR = ("format", "precision", "out", "calib_data", "data", "int8_method", "int8_layout", "device")
_INT = ("batch", "calib_images", "verify_images", "opset", "opt_level")
_BOOL = ("dynamic", "preprocess", "argmax", "verify")


def _check_profile_value(where: str, key: str, value: object) -> object:
    """The value of a profile key in the form export() takes, or a CitysegError naming it."""
    def bad(expected: str) -> CitysegError:
        return CitysegError(f"{where}: key {key!r} must be {expected}, got {value!r}"[:300])

    if key in _STR and not isinstance(value, str):
        raise bad("a string")
    if key in _INT and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise bad("a non-negative integer")
    if key in _BOOL and not isinstance(value, bool):
        raise bad("true or false")
    if key == "workspace_gb" and (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0):
        raise bad("a positive number of GiB")
    if key == "keep_fp32" and not (isinstance(value, str) or (isinstance(value, list)
                                                              and all(isinstance(v, str) for v in value))):
        raise bad("'auto' or a list of node names")
    if key == "size":
        if isinstance(value, str):
            return parse_size(value)
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
            raise bad("HxW or [H, W]")
        return tuple(value)
    return value


def _keys(where: str, mapping: dict) -> dict:
    if not all(isinstance(k, str) for k in mapping):
        raise CitysegError(f"{where}: every key must be a name, got {sorted(map(repr, mapping))[:5]}")
    return {k.replace("-", "_"): v for k, v in mapping.items()}


def read_profile(path: str) -> list[dict]:
    """A profile: common keys plus ``exports: [{format, precision, ...}, ...]``, every key known
    and of its type (a bad profile fails here, naming the key, before any export starts)."""
    import yaml

    from ..resources import resolve

    p = resolve("profile", path)  # a path, or a bare name of a shipped profile (smoke, cpu, ...)
    where = f"--profile {p}"
    try:
        doc = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CitysegError(f"{where}: not valid YAML ({first_line(exc)})") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise CitysegError(f"{where}: expected a mapping with an 'exports' list")
    doc = {k: v for k, v in _keys(where, doc).items() if k != "description"}
    entries = doc.pop("exports", None) or [{}]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CitysegError(f"{where}: 'exports' must be a list of mappings ({{format: onnx, ...}})")
    entries = [_keys(where, e) for e in entries]
    unknown = (set(doc) | {k for e in entries for k in e}) - PROFILE_KEYS
    if unknown:
        raise CitysegError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(PROFILE_KEYS)})")
    jobs = []
    for entry in entries:
        merged = {**doc, **entry}
        jobs.append({k: _check_profile_value(where, k, v) for k, v in merged.items() if v is not None})
    return jobs


@app.command("export")
@click.argument("model", type=click.Path())
@click.option("--format", "-f", "fmt", default=None,
              help="onnx | trt (engine) | aoti | openvino | triton (a model repository)  [default: onnx]")
@click.option("--precision", "-p", default=None, help="fp32 | fp16 | bf16 | int8  [default: fp32]")
@click.option("--out", "-o", default=None, help="output file (folder for openvino); default next to MODEL")
@click.option("--size", default=None, help="input HxW (default: the checkpoint's input size)")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="batch size (the opt batch if dynamic)")
@click.option("--dynamic/--static", default=None, help="dynamic batch/height/width")
@click.option("--calib-data", type=click.Path(), default=None, help="Cityscapes root: int8 calibration (train split)")
@click.option("--data", type=click.Path(), default=None, help="Cityscapes root: accuracy check (val split, mIoU)")
@click.option("--calib-images", type=click.IntRange(min=1), default=None, help="calibration images [32]")
@click.option("--keep-fp32", default=None, help="int8: 'auto' or node names left in fp32")
@click.option("--preprocess", is_flag=True, default=None, help="uint8 NHWC input, normalisation in the graph")
@click.option("--argmax", is_flag=True, default=None, help="uint8 label output (argmax in the graph)")
@click.option("--opset", type=click.IntRange(17, 20), default=None, help="ONNX opset [18]")
@click.option("--int8-method", default=None, help="openvino int8: qdq (default) | nncf")
@click.option("--int8-layout", default=None,
              help="onnx int8: tensorrt (default; TensorRT, OpenVINO and cityseg run it) | onnxruntime "
                   "(uint8 activations, ReLU folded: fast in plain onnxruntime on x86, not for TensorRT)")
@click.option("--calibration", default=None,
              help="int8 calibration: minmax (default) | percentile | entropy")
@click.option("--max-drop", type=float, default=None,
              help="int8: keep the most harmful layers in float until the mIoU drop on --val-data "
                   "is at most this many points (docs/accuracy.md)")
@click.option("--val-data", type=click.Path(), default=None,
              help="--max-drop: Cityscapes root whose val split measures the drop [the calibration root]")
@click.option("--strict", is_flag=True, default=None, help="--max-drop: exit 2 when the bound is not reached")
@click.option("--max-trials", type=click.IntRange(min=1), default=None, help="--max-drop: exports tried [12]")
@click.option("--device", default=None, help="aoti: cpu | cuda")
@click.option("--workspace", "workspace_gb", type=float, default=None, help="trt: workspace GiB [4]")
@click.option("--no-verify", "verify", flag_value=False, default=None, help="skip the parity check")
@click.option("--profile", default=None,
              help="export profile: a YAML path or a shipped name (smoke, cpu, edge, tensorrt; see export/)")
def export_cmd(model: str, fmt, precision, out, size, batch, dynamic, calib_data, data, calib_images,
               keep_fp32, preprocess, argmax, opset, int8_method, int8_layout, calibration, max_drop,
               val_data, strict, max_trials, device, workspace_gb, verify, profile) -> None:
    """Export MODEL (a cityseg checkpoint) to ONNX, TensorRT, AOTInductor or OpenVINO.

    Precision lives in the exported graph (fp16 casts, int8 Q/DQ calibrated on --calib-data);
    every artifact is checked against PyTorch and carries the model's metadata.
    """
    from ..artifacts import artifact_kind, sidecar_path
    from ..export import export, next_commands

    given = {"format": fmt, "precision": precision, "out": out, "size": parse_size(size),
             "batch": batch, "dynamic": dynamic, "calib_data": calib_data, "data": data,
             "calib_images": calib_images, "keep_fp32": keep_fp32, "preprocess": preprocess,
             "argmax": argmax, "opset": opset, "int8_method": int8_method,
             "int8_layout": int8_layout, "device": device, "calibration": calibration,
             "max_drop": max_drop, "val_data": val_data, "strict": strict, "max_trials": max_trials,
             "workspace_gb": workspace_gb, "verify": verify}
    given = {k: v for k, v in given.items() if v is not None}
    if (fmt or "").lower() == "triton":
        _export_triton(model, given)
        return
    jobs = read_profile(profile) if profile else [{}]
    if len(jobs) > 1 and "out" in given:
        raise CitysegError("--out names one file; a profile with several exports writes each next "
                           "to MODEL (drop --out)")
    results = []
    for job in jobs:
        kwargs = {**job, **given}
        kwargs.setdefault("format", "onnx")
        result = export(model, log=click.echo, **kwargs)
        for r in result.intermediates + [result]:
            click.echo(f"export success: {r.format} {r.precision} → {r.path} "
                       f"({r.seconds:.1f} s, {r.size_mb:.1f} MB)")
            side = sidecar_path(r.path)
            if artifact_kind(Path(r.path)) in ("aoti", "tensorrt") and side.is_file():
                click.echo(f"  metadata: {side} (classes, palette, normalisation, io; keep it next "
                           f"to {Path(r.path).name})")
        results.append(result)
    click.echo("next:")
    root = given.get("data") or given.get("calib_data") or jobs[0].get("data")
    for r in results:
        for line in next_commands(r, model, root):
            click.echo(f"  {line}")


def _export_triton(model: str, given: dict) -> None:
    """``--format triton --out REPO``: a Triton model repository (``--batch``: max_batch_size)."""
    from ..export.triton import export_triton

    out = given.pop("out", None)
    if not out:
        raise CitysegError("--format triton writes a model repository: give --out REPO")
    given.pop("format", None)
    max_batch, device = given.pop("batch", 8), given.pop("device", None)
    folder = export_triton(model, out, max_batch=max_batch, device=device, log=click.echo, **given)
    click.echo(f"export success: triton → {folder}")
    click.echo("next:")
    click.echo(f"  docker run --rm -p 8000:8000 -p 8001:8001 -v {Path(out).resolve()}:/models "
               f"nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models")
