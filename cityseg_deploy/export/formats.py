"""The export formats as data (like Ultralytics' exporter): name, aliases, suffix, precisions.

Validation, default output names, the options table and ``export --help`` read this one table;
adding a format is one row here and one module (``export_<name>`` in ``cityseg_deploy.export``).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from ..errors import CitysegError


@dataclass(frozen=True)
class Format:
    name: str
    aliases: tuple[str, ...]
    suffix: str                 # file suffix, or "_openvino_model" for a folder
    precisions: tuple[str, ...]
    needs_gpu: bool
    module: str                 # cityseg_deploy.export.<module>.export_<name>
    description: str
    from_onnx: bool = False     # built from the project's ONNX (so MODEL may be a .onnx)


FORMATS: tuple[Format, ...] = (
    Format("onnx", (), ".onnx", ("fp32", "fp16", "int8"), False, "onnx",
           "ONNX (onnxruntime, TensorRT input)"),
    Format("trt", ("engine", "tensorrt"), ".engine", ("fp32", "fp16", "int8"), True, "tensorrt",
           "TensorRT engine (strongly typed, from the ONNX graph)", from_onnx=True),
    Format("aoti", ("pt2", "aotinductor"), ".pt2", ("fp32", "fp16", "bf16"), False, "aoti",
           "AOTInductor package (torch._inductor.aoti_load_package)"),
    Format("openvino", ("ov", "ir"), "_openvino_model", ("fp32", "bf16", "int8"), False, "openvino",
           "OpenVINO IR folder", from_onnx=True),
)


def format_names() -> list[str]:
    return [f.name for f in FORMATS] + [a for f in FORMATS for a in f.aliases]


def get_format(name: str) -> Format:
    key = (name or "").strip().lower()
    for fmt in FORMATS:
        if key == fmt.name or key in fmt.aliases:
            return fmt
    close = difflib.get_close_matches(key, format_names(), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise CitysegError(f"--format {name!r}: unknown export format{hint} "
                       f"(choose {', '.join(f.name for f in FORMATS)})")


def default_output(model_path: Path, fmt: Format, precision: str) -> Path:
    """Next to the checkpoint: <stem>.onnx, <stem>_fp16.onnx, <stem>_int8_openvino_model/, ..."""
    stem = model_path.stem
    if model_path.suffix == ".onnx":
        stem = stem.removesuffix("_fp16").removesuffix("_int8")
    tag = "" if precision == "fp32" else f"_{precision}"
    return model_path.with_name(f"{stem}{tag}{fmt.suffix}")


__all__ = ["FORMATS", "Format", "default_output", "format_names", "get_format"]
