"""Every artifact format, one record each: names, files, metadata, precisions, exporter, runner, Triton.

Why one home: the same facts (TensorRT's three names, which suffix is which kind, where the
metadata lives, the Triton platform) were written in runtime/, artifacts.py, export/, quickstart
and bench/suite.py, and drifted.  Everything else derives from :data:`FORMATS`: the runtime's
backend table, :func:`cityseg_deploy.artifacts.artifact_kind`, export's ``--format`` choices,
``check_destination`` and default output names, the Triton platform names.

Adding a format = one :class:`Format` record (here, or :func:`register` from a plugin) plus its
exporter and runner modules (docs/INTERFACES.md, "Add a backend").  Exporter and runner are
dotted names (``"package.module:attr"``), imported only when used, so this module imports
nothing heavy and sits below runtime/ and export/.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any

from .errors import CitysegError

#: where an artifact keeps its metadata (artifacts.py reads each)
METADATA_PLACES = ("checkpoint", "onnx", "folder", "sidecar", "repository")


@dataclass(frozen=True)
class Format:
    """One artifact format.  ``name`` is its identity (the artifact kind, the runtime's key);
    ``cli`` the spelling export prints and lists (``trt``), ``aliases`` the other accepted names."""

    name: str
    aliases: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()      # file suffixes read; the first is the one export writes
    folder: str = ""                    # a folder artifact: its name ends in this (and holds suffixes[0])
    metadata: str = "sidecar"           # one of METADATA_PLACES
    precisions: tuple[str, ...] = ()    # export precisions; () = not an export target
    exporter: str | None = None         # "module:function(job, out, precision) -> ExportResult"
    runner: str | None = None           # "module:Segmenter subclass"
    triton: tuple[str, str, str] | None = None  # (config key, platform/backend, model file name)
    needs_gpu: bool = False
    from_onnx: bool = False             # exported from the project's ONNX (MODEL may be a .onnx)
    description: str = ""
    cli_name: str = ""                  # export's spelling when not ``name``

    def __post_init__(self) -> None:
        if self.metadata not in METADATA_PLACES:
            raise ValueError(f"format {self.name}: metadata {self.metadata!r} not in {METADATA_PLACES}")

    @property
    def cli(self) -> str:
        return self.cli_name or self.name

    @property
    def names(self) -> tuple[str, ...]:
        """Every spelling that means this format (lower case)."""
        return tuple(dict.fromkeys((self.name, self.cli, *self.aliases)))

    @property
    def other_names(self) -> tuple[str, ...]:
        """The names besides :attr:`cli`, for tables (``trt``: engine, tensorrt)."""
        return tuple(n for n in (*self.aliases, self.name) if n != self.cli)

    @property
    def suffix(self) -> str:
        """What an exported artifact's name ends in: ``.onnx``, or ``_openvino_model`` for a folder."""
        return self.folder or (self.suffixes[0] if self.suffixes else "")

    @property
    def writes_folder(self) -> bool:
        return bool(self.folder) or self.metadata == "repository"

    @property
    def exportable(self) -> bool:
        return self.exporter is not None

    def exporter_fn(self):
        return _resolve(self.exporter, f"{self.name} exporter")

    def runner_class(self):
        return _resolve(self.runner, f"{self.name} runner")


def _resolve(dotted: str | None, what: str) -> Any:
    """``"pkg.module:attr"`` → the object (the import happens here, when the format is used)."""
    if not dotted:
        raise CitysegError(f"no {what}")
    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)


_P = "cityseg_deploy"
FORMATS: list[Format] = [
    Format("torch", ("pt", "checkpoint"), (".pt", ".pth"), metadata="checkpoint",
           runner=f"{_P}.runtime.torch_backend:TorchSegmenter", description="cityseg checkpoint"),
    Format("onnx", (), (".onnx",), metadata="onnx", precisions=("fp32", "fp16", "int8"),
           exporter=f"{_P}.export.onnx:export_onnx", runner=f"{_P}.runtime.onnxruntime_backend:OnnxRuntimeSegmenter",
           triton=("platform", "onnxruntime_onnx", "model.onnx"), description="ONNX (onnxruntime, TensorRT input)"),
    Format("tensorrt", ("trt", "engine"), (".engine", ".plan", ".trt"), metadata="sidecar",
           precisions=("fp32", "fp16", "int8"), exporter=f"{_P}.export.tensorrt:export_trt",
           runner=f"{_P}.runtime.tensorrt_backend:TensorRTSegmenter",
           triton=("platform", "tensorrt_plan", "model.plan"), needs_gpu=True, from_onnx=True,
           description="TensorRT engine (strongly typed, from the ONNX graph)", cli_name="trt"),
    Format("aoti", ("pt2", "aotinductor"), (".pt2",), metadata="sidecar", precisions=("fp32", "fp16", "bf16"),
           exporter=f"{_P}.export.aoti:export_aoti", runner=f"{_P}.runtime.aoti_backend:AOTISegmenter",
           description="AOTInductor package (torch._inductor.aoti_load_package)"),
    Format("openvino", ("ov", "ir"), (".xml",), folder="_openvino_model", metadata="folder",
           precisions=("fp32", "bf16", "int8"), exporter=f"{_P}.export.openvino:export_openvino",
           runner=f"{_P}.runtime.openvino_backend:OpenVINOSegmenter",
           triton=("backend", "openvino", "model.xml"), from_onnx=True, description="OpenVINO IR folder"),
    Format("triton", (), (), metadata="repository", precisions=("fp32", "fp16", "int8"),
           exporter=f"{_P}.export.triton:export_triton_repo", from_onnx=True,
           description="Triton model repository (--out REPO; wraps onnx, or an .onnx/IR/engine as it is)"),
]


def register(fmt: Format, *, replace: bool = False) -> Format:
    """Add a format (a plugin's, a test's): one record, seen by every table derived from here.
    A name or suffix another format already claims is refused unless ``replace``."""
    for other in list(FORMATS):
        clash = (set(other.names) & set(fmt.names)) or (set(other.suffixes) & set(fmt.suffixes))
        if clash and not (replace and other.name == fmt.name):
            raise CitysegError(f"format {fmt.name}: {sorted(clash)} already belong to {other.name}")
    FORMATS[:] = [f for f in FORMATS if f.name != fmt.name] + [fmt]
    return fmt


def unregister(name: str) -> None:
    FORMATS[:] = [f for f in FORMATS if f.name != name]


def find(name: str) -> Format | None:
    key = (name or "").strip().lower()
    return next((f for f in FORMATS if key in f.names), None)


def get(name: str) -> Format:
    """The format named ``name`` (any alias) or a CitysegError (the caller knows the name exists)."""
    fmt = find(name)
    if fmt is None:
        raise CitysegError(f"unknown artifact format {name!r} (known: {', '.join(f.name for f in FORMATS)})")
    return fmt


def export_formats() -> list[Format]:
    return [f for f in FORMATS if f.exportable]


def export_names() -> list[str]:
    """Every name ``export --format`` accepts (export spellings first, then the aliases)."""
    fmts = export_formats()
    return [f.cli for f in fmts] + [n for f in fmts for n in f.other_names]


def get_export_format(name: str) -> Format:
    """The export target called ``name`` (any alias), or ``--format 'x': unknown export format``."""
    fmt = find(name)
    if fmt is not None and fmt.exportable:
        return fmt
    close = difflib.get_close_matches((name or "").strip().lower(), export_names(), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise CitysegError(f"--format {name!r}: unknown export format{hint} "
                       f"(choose {', '.join(f.cli for f in export_formats())})")


def runnable() -> list[Format]:
    """Formats ``runtime.load`` opens (a runner), in table order."""
    return [f for f in FORMATS if f.runner]


def kind_by_suffix() -> dict[str, str]:
    """File suffix → format name, for the formats a runner reads."""
    return {s: f.name for f in runnable() for s in f.suffixes}


def folder_format(name: str) -> Format | None:
    """The folder format whose folder name ends like ``name`` (``x_openvino_model``)."""
    return next((f for f in runnable() if f.folder and name.endswith(f.folder)), None)


def triton_platforms() -> dict[str, tuple[str, str, str]]:
    """Format name → (config key, platform or backend, model file name) for Triton."""
    return {f.name: f.triton for f in FORMATS if f.triton}


__all__ = ["FORMATS", "Format", "METADATA_PLACES", "export_formats", "export_names", "find",
           "folder_format", "get", "get_export_format", "kind_by_suffix", "register", "runnable",
           "triton_platforms", "unregister"]
