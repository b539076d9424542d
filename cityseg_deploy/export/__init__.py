"""``cityseg export``: one checkpoint → ONNX (fp32/fp16/int8), TensorRT, AOTInductor, OpenVINO.

Two tables drive validation, defaults and help: the formats registry (``cityseg_deploy/formats.py``,
one record per format naming its exporter) and the options (``options.py``).  Each format is one
module (``onnx.py``, ``fp16.py``, ``quantize.py``, ``tensorrt.py``, ``aoti.py``, ``openvino.py``,
``triton.py``) that turns an :class:`ExportJob` into an :class:`ExportResult`.  Adding a format is
one record there and one file (docs/INTERFACES.md, "Add a backend").
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Callable

from ..errors import CitysegError
from ..fileio import check_writable_folder
from ..precision import PRECISIONS
from ..formats import Format
from .formats import default_output, export_formats, get_format
from .job import ExportJob
from .options import OPTIONS, check_applies, check_names
from .result import ExportResult


def format_table() -> str:
    """Markdown table of the formats and the options that apply to one format only (for
    ``export --help`` and docs/export.md; both from the format and option tables)."""
    rows = ["| format | aliases | suffix | precisions | GPU | options for this format only |",
            "| --- | --- | --- | --- | --- | --- |"]
    for f in export_formats():
        own = [(o.flag if o.cli else f"{o.name} (profile key)")
               + (f" ({', '.join(o.precisions)})" if o.precisions else "")
               for o in OPTIONS if o.formats == (f.name,)]
        suffix = f.suffix or ("REPO/<name>/" if f.metadata == "repository" else "-")
        rows.append(f"| {f.cli} | {', '.join(f.other_names) or '-'} | {suffix} | "
                    f"{', '.join(f.precisions)} | {'yes' if f.needs_gpu else 'no'} | "
                    f"{', '.join(own) or '-'} |")
    return "\n".join(rows)


def _validate(fmt: Format, precision: str, opts: dict[str, Any], source: Path) -> None:
    if precision not in PRECISIONS:
        close = difflib.get_close_matches(precision, PRECISIONS, n=1)
        raise CitysegError(f"--precision {precision!r}: unknown"
                           f"{'; did you mean ' + repr(close[0]) + '?' if close else ''} (choose {', '.join(PRECISIONS)})")
    if precision not in fmt.precisions:
        raise CitysegError(f"--precision {precision} is not supported by --format {fmt.cli} "
                           f"(it supports {', '.join(fmt.precisions)})")
    if fmt.name == "aoti" and (opts.get("preprocess") or opts.get("argmax")):
        raise CitysegError("--preprocess/--argmax are ONNX-graph options; --format aoti exports the "
                           "network as it is (float NCHW in, logits out)")
    if fmt.name == "aoti" and precision in ("fp16", "bf16") and not str(opts.get("device") or "cpu").startswith("cuda"):
        raise CitysegError(f"--format aoti --precision {precision} compiles half-precision CUDA kernels: "
                           f"add --device cuda (CPU packages are fp32)")
    if opts.get("max_drop") is not None:
        from .accuracy_control import validate as validate_accuracy_control

        validate_accuracy_control(fmt.name, precision, opts)
    check_applies(fmt.name, precision, opts)  # each option where export/options.py says it applies
    if source.suffix == ".onnx":
        if not fmt.from_onnx:
            raise CitysegError(f"{source}: --format {fmt.cli} exports from a checkpoint (.pt), not "
                               f"from an ONNX file")
        if precision not in ("fp32", "bf16") and fmt.name == "openvino":
            raise CitysegError(f"{source}: --precision {precision} for OpenVINO is calibrated from the "
                               f"checkpoint; pass the .pt instead of the ONNX file")


def _sha256(path: Path) -> str:
    from ..models.checkpoint import file_sha256

    return file_sha256(path)


def make_job(model_path: str | os.PathLike, *, size=None, batch: int = 1, dynamic: bool = False,
             **kwargs: Any) -> ExportJob:
    from ..artifacts import read_artifact_meta
    from ..models.checkpoint import read_meta

    source = Path(model_path)
    if not source.is_file():
        raise CitysegError(f"{source}: no such file; pass a cityseg checkpoint (.pt) "
                           f"written by 'cityseg train' or 'cityseg convert-weights'")
    if batch < 1:
        raise CitysegError(f"--batch {batch}: must be at least 1")
    source_onnx = None
    if source.suffix == ".onnx":
        meta, io = read_artifact_meta(source)
        wanted = kwargs.pop("precision", None)
        if wanted not in (None, io.get("precision"), "bf16"):
            raise CitysegError(f"{source}: a {io.get('precision')} ONNX graph cannot become "
                               f"{wanted}; pass the checkpoint (.pt) to export --precision {wanted}")
        source_onnx = source
        size = size or tuple(io["size"])
        kwargs.setdefault("preprocess", io.get("input") == "uint8_nhwc")
        kwargs.setdefault("argmax", io.get("output") == "labels")
        dynamic = dynamic or bool(io.get("dynamic"))
        batch = batch if batch != 1 else int(io.get("batch", 1))
        sha = io.get("source_sha256") or _sha256(source)
    else:
        meta = read_meta(source)
        sha = _sha256(source)
    size = tuple(size) if size else tuple(meta.input_size)
    for v in size:
        if v % 8:
            raise CitysegError(f"--size {size[0]}x{size[1]}: height and width must be multiples of 8 "
                               f"(the networks downsample by 8 or more)")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    for key in ("calib_data", "data"):
        if key in kwargs:
            kwargs[key] = Path(kwargs[key])
            if not kwargs[key].is_dir():
                raise CitysegError(f"--{key.replace('_', '-')} {kwargs[key]}: no such folder; pass a "
                                   f"Cityscapes root (leftImg8bit/, gtFine/)")
    return ExportJob(source=source, meta=meta, source_sha256=sha, size=size, batch=batch,
                     dynamic=dynamic, source_onnx=source_onnx, **kwargs)


def check_destination(out: Path, fmt: Format) -> None:
    """Refuse an ``--out`` the export could not be renamed onto, before any work is done.

    Why: an existing folder named like a ``.onnx`` file, or a path under a regular file, failed
    only at the final rename — a traceback after the whole export had run.
    """
    if out.is_dir() and not fmt.writes_folder:
        raise CitysegError(f"--out {out}: an existing folder; --format {fmt.cli} writes one file — "
                           f"give a file name (for example {out / ('model' + fmt.suffix)})")
    if out.exists() and not out.is_dir() and fmt.writes_folder:
        ending = f" ending in {fmt.folder}" if fmt.folder else ""
        raise CitysegError(f"--out {out}: an existing file; --format {fmt.cli} writes a folder — "
                           f"give a new folder name{ending}")
    check_writable_folder(out.parent, what=f"--out {out}")


def export(model_path: str | os.PathLike, *, format: str = "onnx", precision: str = "fp32",
           out: str | os.PathLike | None = None, size: tuple[int, int] | None = None,
           batch: int | None = None, dynamic: bool | None = None, calib_data: str | os.PathLike | None = None,
           data: str | os.PathLike | None = None, log: Callable[[str], None] | None = print,
           **options: Any) -> ExportResult:
    """Export ``model_path`` (a checkpoint; a project fp32 ONNX for trt/openvino) to ``format``.

    ``format="triton"`` writes a Triton model repository at ``out`` (``batch``: its
    max_batch_size [8]; ``dynamic`` [True]) around the ONNX export of a checkpoint.
    Options (all keyword): the rows of ``export/options.py`` (``cityseg export --help`` lists
    them); an unknown name, or one given to a format or precision it does not apply to, is a
    CitysegError naming it.
    Returns the :class:`ExportResult` of the artifact; ONNX files written on the way are in
    ``result.intermediates``.
    """
    fmt = get_format(format)
    precision = (precision or "fp32").lower()
    source = Path(model_path)
    check_names(options)
    _validate(fmt, precision, options, source)
    accuracy = None
    if options.get("max_drop") is not None:  # accuracy control (export/accuracy_control.py)
        accuracy = {k: options.pop(k, None) for k in ("max_drop", "val_data", "strict", "max_trials")}
    for key in ("val_data", "strict", "max_trials"):
        if options.get(key) not in (None, False):
            raise CitysegError(f"--{key.replace('_', '-')} applies with --max-drop only")
        options.pop(key, None)
    if fmt.metadata == "repository":  # a model repository wraps an artifact: no ExportJob of its own
        if out:
            check_destination(Path(out), fmt)
        return fmt.exporter_fn()(source, out, precision, log=log or (lambda _msg: None),
                                 size=size, batch=batch, dynamic=dynamic, calib_data=calib_data,
                                 data=data, **options)
    batch, dynamic = (1 if batch is None else batch), bool(dynamic)  # None: not given
    if source.suffix == ".onnx" and fmt.name == "tensorrt" and Path(source).is_file():
        from ..artifacts import read_artifact_meta

        onnx_precision = read_artifact_meta(source)[1].get("precision", "fp32")
        if precision == "fp32" and onnx_precision != "fp32":
            precision = onnx_precision  # a TensorRT engine compiles what the graph says
        options["precision"] = precision
    out_path = Path(out) if out else default_output(source, fmt, precision)
    if fmt.folder and out and not out_path.name.endswith(fmt.folder):
        if out_path.suffix in fmt.suffixes:  # the .xml inside the folder names the folder
            out_path = out_path.parent
    check_destination(out_path, fmt)  # before any work: the export may take minutes
    job = make_job(source, size=size, batch=batch, dynamic=dynamic, calib_data=calib_data,
                   data=data, log=log or (lambda _msg: None), **options)
    if out_path.resolve() == source.resolve():
        raise CitysegError(f"--out {out_path}: that is the model being exported; choose another name")
    exporter = fmt.exporter_fn()
    shape_in = "x".join(map(str, job.example_shape())) + (" (dynamic)" if job.dynamic else "")
    shape_out = "x".join(map(str, job.output_shape()))
    calib = ""
    if precision == "int8":
        from .quantize import calibration_of

        calib = f", calibration {calibration_of(job)}"
    job.log(f"cityseg export: {source.name} ({job.meta.arch}, {job.meta.num_classes} classes) → "
            f"{fmt.cli} {precision}, input {job.input_name} {shape_in} "
            f"{'uint8' if job.preprocess else 'float32'}, output {job.output_name} {shape_out}{calib}")
    from ..runlock import folder_lock

    # one writer per artifact: a second export to the same --out is refused while this one runs
    with folder_lock(out_path.parent, what=f"export to {out_path.name}",
                     name=f".{out_path.name}.lock", remove=True):
        if accuracy is not None:
            from .accuracy_control import export_with_max_drop

            return export_with_max_drop(job, out_path, precision, fmt, exporter, **accuracy)
        return exporter(job, out_path, precision)


def next_commands(result: ExportResult, model_path: str | os.PathLike, data: str | None = None) -> list[str]:
    root = data or "ROOT"
    return [f"cityseg bench {result.path}",
            f"cityseg check {model_path} {result.path} --data {root}"]


def __getattr__(name: str):
    if name == "FORMATS":  # the export targets (derived from the formats registry)
        return tuple(export_formats())
    raise AttributeError(name)


__all__ = ["Format", "ExportJob", "ExportResult", "export", "get_format", "format_table",
           "default_output", "next_commands"]
