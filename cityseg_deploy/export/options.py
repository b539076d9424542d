"""Every option of ``cityseg export``, declared once: name, type, default, help, where it applies.

Why one table: the click options, the profile keys, the :class:`ExportJob` fields and the help
were hand-kept lists that drifted.  The CLI builds its options from :data:`OPTIONS`, a profile is
checked against it, ``ExportJob`` takes its defaults from it, and an option given to a format or
precision it does not apply to is refused, naming it (it used to be dropped without a word).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from ..errors import CitysegError, short_repr
from ..precision import PRECISIONS
from .. import formats as registry
from .formats import export_formats, get_format

INT8_LAYOUTS = ("tensorrt", "onnxruntime")  # ONNX int8 Q/DQ forms (export/quantize.py)
# the formats built from the project's ONNX graph (triton: from a checkpoint, through ONNX)
ONNX_GRAPH = ("onnx", "tensorrt", "openvino", "triton")


@dataclass(frozen=True)
class Option:
    """One export option; ``formats``/``precisions`` empty = it applies to all of them."""

    name: str                          # keyword of export(), profile key, ExportJob field
    kind: str                          # str | path | int | float | bool | flag | size | names
    default: Any                       # what an export uses when the option is not given
    help: str
    formats: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    decls: tuple[str, ...] = ()        # click declarations when not just --<name>
    cli: bool = True                   # a command-line option (else a profile/API key only)
    job: bool = True                   # an ExportJob field (else export() consumes it)
    low: float | None = None           # int: minimum; float: exclusive lower bound
    high: int | None = None
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        """How messages name it: the command-line spelling."""
        return next((d for d in self.decls if d.startswith("--")), "--" + self.name.replace("_", "-")
                    ).split("/")[0]

    def applies(self, fmt: str, precision: str) -> bool:
        return ((not self.formats or fmt in self.formats)
                and (not self.precisions or precision in self.precisions))

    def scope(self) -> str:
        """``--format onnx --precision int8`` — where the option applies, for messages."""
        parts = []
        if self.formats:
            parts.append("--format " + _either(tuple(registry.get(f).cli for f in self.formats)))
        if self.precisions:
            parts.append("--precision " + _either(self.precisions))
        return " ".join(parts)


def _either(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _format_help() -> str:
    return " | ".join(f.cli + (" (a model repository)" if f.metadata == "repository" else "")
                      for f in export_formats()) + "  [default: onnx]"


OPTIONS: tuple[Option, ...] = (
    Option("format", "str", "onnx", _format_help(), decls=("--format", "-f"), job=False),
    Option("precision", "str", "fp32", " | ".join(PRECISIONS) + "  [default: fp32]",
           decls=("--precision", "-p"), job=False),
    Option("out", "str", None, "output file (folder for openvino); default next to MODEL",
           decls=("--out", "-o"), job=False),
    Option("size", "size", None, "input HxW (default: the checkpoint's input size)"),
    Option("batch", "int", 1, "batch size (the opt batch if dynamic)", low=1),
    Option("dynamic", "bool", False, "dynamic batch/height/width", decls=("--dynamic/--static",)),
    Option("calib_data", "path", None, "Cityscapes root: int8 calibration (train split)"),
    Option("data", "path", None, "Cityscapes root: accuracy check (val split, mIoU)"),
    Option("calib_images", "int", 32, "calibration images [32]", precisions=("int8",), low=1),
    Option("keep_fp32", "names", None, "int8: 'auto' or node names left in fp32", precisions=("int8",)),
    Option("preprocess", "flag", False, "uint8 NHWC input, normalisation in the graph", formats=ONNX_GRAPH),
    Option("argmax", "flag", False, "uint8 label output (argmax in the graph)", formats=ONNX_GRAPH),
    Option("opset", "int", 18, "ONNX opset [18]", formats=ONNX_GRAPH, low=17, high=20),
    Option("int8_method", "str", None, "openvino int8: qdq (default) | nncf",
           formats=("openvino",), precisions=("int8",)),
    Option("int8_layout", "str", None,
           "onnx int8: tensorrt (default; TensorRT, OpenVINO and cityseg run it) | onnxruntime "
           "(uint8 activations, ReLU folded: fast in plain onnxruntime on x86, not for TensorRT)",
           formats=("onnx",), precisions=("int8",), choices=INT8_LAYOUTS),
    Option("calibration", "str", None, "int8 calibration: minmax (default) | percentile | entropy",
           precisions=("int8",)),
    Option("max_drop", "float", None,
           "int8: keep the most harmful layers in float until the mIoU drop on --val-data is at "
           "most this many points (docs/accuracy.md)",
           formats=("onnx", "openvino"), precisions=("int8",), job=False),
    Option("val_data", "path", None,
           "--max-drop: Cityscapes root whose val split measures the drop [the calibration root]",
           job=False),
    Option("strict", "flag", False, "--max-drop: exit 2 when the bound is not reached", job=False),
    Option("max_trials", "int", None, "--max-drop: exports tried [12]", job=False, low=1),
    Option("device", "str", "cpu", "aoti: cpu | cuda; triton: the instances' kind", formats=("aoti", "triton")),
    Option("name", "str", None, "triton: the model's name in REPO [the file's stem]", formats=("triton",),
           job=False),
    Option("instances", "int", None, "triton: instance_group count [1]", formats=("triton",), job=False, low=1),
    Option("overwrite", "flag", False, "triton: replace REPO/NAME if it exists (else refused)",
           formats=("triton",), job=False),
    Option("logits", "flag", False, "triton: float NCHW in, logits out [uint8 pixels in, labels out]",
           formats=("triton",), job=False),
    Option("workspace_gb", "float", 4.0, "trt: workspace GiB [4]", formats=("tensorrt",),
           decls=("--workspace",), low=0),
    Option("verify", "bool", True, "skip the parity check", decls=("--no-verify",)),
    Option("verify_images", "int", 8, "images of the parity check", cli=False),
    Option("opt_level", "int", 3, "TensorRT builder optimisation level", formats=("tensorrt",), cli=False),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
JOB_DEFAULTS: dict[str, Any] = {o.name: o.default for o in OPTIONS if o.job}
assert all(set(o.formats) <= {f.name for f in registry.FORMATS} for o in OPTIONS), "unknown format in OPTIONS"


def closest(name: str) -> str:
    """``; did you mean 'opset'?`` for a misspelt option name, or ``""``."""
    close = difflib.get_close_matches(name, list(BY_NAME), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_names(options: dict[str, Any], where: str = "export: ") -> None:
    """Refuse a keyword that is no export option (``export(ckpt, opset=17)`` is one; ``opst`` not)."""
    for name in options:
        if name not in BY_NAME:
            raise CitysegError(f"{where}unknown option {short_repr(name)}{closest(str(name)[:100])} "
                               f"(known: {', '.join(BY_NAME)})")


def check_applies(fmt: str, precision: str, options: dict[str, Any]) -> None:
    """Refuse an option given (not None/False) to a format or precision it does not apply to,
    and a value outside its choices."""
    for opt in OPTIONS:
        value = options.get(opt.name)
        if value is None or value is False or (isinstance(value, (str, list)) and not value):
            continue  # not given
        if not opt.applies(fmt, precision):
            raise CitysegError(f"{opt.flag} applies to {opt.scope()} only")
        if opt.choices and value not in opt.choices:
            raise CitysegError(f"{opt.flag} {short_repr(value)}: choose {_either(opt.choices)}")


def share(exports: list[dict[str, Any]], shared: dict[str, Any], *,
          over: bool = True) -> list[dict[str, Any]]:
    """``shared`` options laid over (``over``) or under each export's own.

    For options given once for several exports (the command line with a profile, a profile's
    common keys): each goes to the exports it applies to (``--calib-images`` to the int8 ones);
    one that applies to none of them goes to all, so that the export refuses it, naming it.
    """
    def kind(e: dict[str, Any]) -> tuple[str, str]:
        picked = {k: shared[k] for k in ("format", "precision") if k in shared}
        merged = {**e, **picked} if over else {**picked, **e}
        return (get_format(merged.get("format") or "onnx").name,
                str(merged.get("precision") or "fp32").lower())

    kinds = [kind(e) for e in exports]
    out = [dict(e) for e in exports]
    for key, value in shared.items():
        opt = BY_NAME.get(key)
        wanted = [opt is None or opt.applies(*k) for k in kinds]
        for job, ok in zip(out, wanted):
            if (ok or not any(wanted)) and (over or key not in job):
                job[key] = value
    return out


def check_value(where: str, key: str, value: Any) -> Any:
    """A profile value in the form export() takes (a size string stays for the caller to parse),
    or a CitysegError naming the key."""
    opt = BY_NAME[key]
    kind = opt.kind

    def bad(expected: str) -> CitysegError:
        return CitysegError(f"{where}: key {key!r} must be {expected}, got {short_repr(value)}")

    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in ("str", "path") and not isinstance(value, str):
        raise bad("a string")
    if kind == "int" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise bad("a non-negative integer")
    if kind in ("bool", "flag") and not isinstance(value, bool):
        raise bad("true or false")
    if kind == "float" and not (number and (opt.low is None or value > opt.low)):
        raise bad("a number" if opt.low is None else f"a number above {opt.low}")
    if kind == "names" and not (isinstance(value, str) or (isinstance(value, list)
                                                           and all(isinstance(v, str) for v in value))):
        raise bad("'auto' or a list of node names")
    if kind == "size" and not isinstance(value, str) and (
            not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise bad("HxW or [H, W]")
    return tuple(value) if kind == "size" and isinstance(value, list) else value


__all__ = ["BY_NAME", "INT8_LAYOUTS", "JOB_DEFAULTS", "OPTIONS", "Option", "check_applies",
           "check_names", "check_value", "closest", "share"]
