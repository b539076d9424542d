"""``cityseg export MODEL --format onnx|trt|aoti|openvino [--precision ...]`` (DESIGN.md's CLI).

Thin: parse, call :func:`cityseg_deploy.export.export` once per requested artifact (one, or the
list of a ``--profile`` YAML), print a success line per artifact and the next commands.
"""
from __future__ import annotations

from pathlib import Path

import click

from ._app import app, parse_size
from ..errors import CitysegError

PROFILE_KEYS = {"format", "precision", "out", "size", "batch", "dynamic", "calib_data", "data",
                "calib_images", "keep_fp32", "preprocess", "argmax", "opset", "int8_method", "int8_layout",
                "device", "verify", "verify_images", "workspace_gb", "opt_level",
                "calibration", "max_drop", "val_data", "strict", "max_trials"}


def read_profile(path: str) -> list[dict]:
    """A profile: common keys plus ``exports: [{format, precision, ...}, ...]``."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise CitysegError(f"--profile {p}: no such file (see the export/ folder for examples)")
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CitysegError(f"--profile {p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise CitysegError(f"--profile {p}: expected a mapping with an 'exports' list")
    doc = {k.replace("-", "_"): v for k, v in doc.items() if k != "description"}
    entries = doc.pop("exports", None) or [{}]
    unknown = (set(doc) | {k.replace("-", "_") for e in entries for k in e}) - PROFILE_KEYS
    if unknown:
        raise CitysegError(f"--profile {p}: unknown keys {sorted(unknown)} (known: {sorted(PROFILE_KEYS)})")
    jobs = []
    for entry in entries:
        merged = dict(doc)
        merged.update({k.replace("-", "_"): v for k, v in entry.items()})
        if isinstance(merged.get("size"), str):
            merged["size"] = parse_size(merged["size"])
        jobs.append(merged)
    return jobs


@app.command("export")
@click.argument("model", type=click.Path())
@click.option("--format", "-f", "fmt", default=None, help="onnx | trt (engine) | aoti | openvino  [default: onnx]")
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
@click.option("--profile", default=None, help="export profile YAML (see export/*.yaml)")
def export_cmd(model: str, fmt, precision, out, size, batch, dynamic, calib_data, data, calib_images,
               keep_fp32, preprocess, argmax, opset, int8_method, int8_layout, calibration, max_drop,
               val_data, strict, max_trials, device, workspace_gb, verify, profile) -> None:
    """Export MODEL (a cityseg checkpoint) to ONNX, TensorRT, AOTInductor or OpenVINO.

    Precision lives in the exported graph (fp16 casts, int8 Q/DQ calibrated on --calib-data);
    every artifact is checked against PyTorch and carries the model's metadata.
    """
    from ..export import export, next_commands

    given = {"format": fmt, "precision": precision, "out": out, "size": parse_size(size),
             "batch": batch, "dynamic": dynamic, "calib_data": calib_data, "data": data,
             "calib_images": calib_images, "keep_fp32": keep_fp32, "preprocess": preprocess,
             "argmax": argmax, "opset": opset, "int8_method": int8_method,
             "int8_layout": int8_layout, "device": device, "calibration": calibration,
             "max_drop": max_drop, "val_data": val_data, "strict": strict, "max_trials": max_trials,
             "workspace_gb": workspace_gb, "verify": verify}
    given = {k: v for k, v in given.items() if v is not None}
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
        results.append(result)
    click.echo("next:")
    root = given.get("data") or given.get("calib_data") or jobs[0].get("data")
    for r in results:
        for line in next_commands(r, model, root):
            click.echo(f"  {line}")
