"""Export's view of the formats registry (``cityseg_deploy/formats.py``): the export targets,
``--format`` lookup by any alias, default output names.

The records themselves live in the registry (one per format, with their exporter); this module
only selects the exportable ones, so adding a format never touches it.
"""
from __future__ import annotations

from pathlib import Path

from .. import formats as registry
from ..formats import Format


def export_formats() -> list[Format]:
    """The export targets, in table order (read at call time: a registered format is seen)."""
    return registry.export_formats()


def format_names() -> list[str]:
    return registry.export_names()


def get_format(name: str) -> Format:
    """The export format called ``name`` (``tensorrt`` ≡ ``trt`` ≡ ``engine``) or a CitysegError
    listing the choices, with a close spelling."""
    return registry.get_export_format(name)


def default_output(model_path: Path, fmt: Format, precision: str) -> Path:
    """Next to the checkpoint: <stem>.onnx, <stem>_fp16.onnx, <stem>_int8_openvino_model/, ..."""
    stem = model_path.stem
    if model_path.suffix == ".onnx":
        stem = stem.removesuffix("_fp16").removesuffix("_int8")
    tag = "" if precision == "fp32" else f"_{precision}"
    return model_path.with_name(f"{stem}{tag}{fmt.suffix}")


def __getattr__(name: str):
    if name == "FORMATS":  # the export targets as a tuple, as before the registry
        return tuple(registry.export_formats())
    raise AttributeError(name)


__all__ = ["Format", "default_output", "export_formats", "format_names", "get_format"]
