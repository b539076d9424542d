"""The fp32 ONNX graph every other format starts from (fp16, int8, OpenVINO, TensorRT, AOTI share its wrapper).

``torch.onnx.export(dynamo=True)`` (the TorchScript exporter only as a printed fallback), optional
in-graph preprocessing (uint8 NHWC in, normalisation with the checkpoint's mean/std) and argmax
(uint8 N×H×W labels out), onnxslim, metadata in ``metadata_props["cityseg"]``, then
``onnx.checker`` (full check) and a parity check against PyTorch in onnxruntime.

Opset 18 by default: TensorRT 10.x parses opsets 9–20 (10.15: up to 24) and onnxruntime ≥ 1.14
runs 18 fully; 18 is the first opset whose Reduce* ops take ``axes`` as an input, which the dynamo
exporter emits natively (no down-conversion pass), and it predates opset-19/21 changes (Resize
``antialias`` semantics, new int4/float8 types) that older TensorRT 10.0–10.3 parsers reject.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..artifacts import ONNX_META_KEY, pack
from ..errors import CitysegError, first_line
from .job import ExportJob

DEFAULT_OPSET = 18
OPSET_RANGE = (17, 20)


class ExportWrapper(nn.Module):
    """The network plus optional preprocessing in front and argmax behind, as one graph."""

    def __init__(self, model: nn.Module, mean, std, *, preprocess: bool, argmax: bool):
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.argmax = argmax
        # RGB uint8 → (x/255 - mean)/std  ==  (x - 255·mean) / (255·std)
        self.register_buffer("mean255", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std255", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preprocess:
            # Cast first: TensorRT takes UINT8 only as a network input/output (Cast reads it),
            # not as a Transpose input.
            x = (x.float().permute(0, 3, 1, 2) - self.mean255) / self.std255
        y = self.model(x)
        if isinstance(y, dict):
            y = y["out"]
        if self.argmax:
            y = y.argmax(1).to(torch.uint8)
        return y


def wrapped_model(job: ExportJob) -> ExportWrapper:
    return ExportWrapper(job.model(), job.meta.mean, job.meta.std, preprocess=job.preprocess,
                         argmax=job.argmax).eval()


def example_input(job: ExportJob) -> torch.Tensor:
    if job.preprocess:
        return torch.randint(0, 256, job.example_shape(), dtype=torch.uint8)
    return torch.randn(job.example_shape())


def _dynamic_shapes(job: ExportJob):
    if not job.dynamic:
        return None
    batch, height, width = torch.export.Dim("batch", min=1, max=64), torch.export.Dim.AUTO, torch.export.Dim.AUTO
    if job.preprocess:
        return ({0: batch, 1: height, 2: width},)
    return ({0: batch, 2: height, 3: width},)


@contextlib.contextmanager
def _quiet():
    """The exporters print pages of progress and warnings; keep the CLI output readable.

    Every logger under ``torch`` and ``onnxscript`` is raised to CRITICAL, not ERROR: when the
    dynamo exporter gives up on a graph (then the TorchScript fallback runs), ``torch._guards``,
    ``torch.fx.experimental.symbolic_shapes`` and friends log the failure *at ERROR* with full
    tracebacks.  Real failures are not hidden: they reach the caller as exceptions (a printed
    fallback note, or the CLI's ``error:`` line).  Loggers that only inherit a level follow
    ``torch``; the ones torch._logging configured with their own level/handler are listed too.
    """
    buf = io.StringIO()
    roots = ("torch", "onnxscript")
    names = {*roots, *(name for name, lg in logging.Logger.manager.loggerDict.items()
                       if isinstance(lg, logging.Logger) and name.split(".")[0] in roots
                       and lg.level != logging.NOTSET)}
    loggers = [logging.getLogger(n) for n in sorted(names)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def exporter_reason(exc: BaseException, limit: int = 160) -> str:
    """One readable line for why an exporter failed.

    torch.onnx's own message is boilerplate ("Failed to export the model with torch.export. This
    is step 1/3 ... Next steps: ...") around the real error, which is its ``__cause__``: take the
    innermost cause's first line, drop ANSI colours, and shorten at a word with an ellipsis.
    """
    import re

    inner = exc
    seen = {id(exc)}
    while inner.__cause__ is not None and id(inner.__cause__) not in seen:
        inner = inner.__cause__
        seen.add(id(inner))
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(inner).splitlines()]
    text = next((ln for ln in lines if ln), "") or type(inner).__name__
    text = re.split(r"\s*Next steps:", text)[0].rstrip(" .:") or type(inner).__name__
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(" ,.:;") + " …"
    return f"{type(inner).__name__}: {text}" if not text.startswith(type(inner).__name__) else text


def torch_to_onnx(job: ExportJob, path: Path) -> str:
    """Write the raw exported graph to ``path``; return the exporter used."""
    model, x = wrapped_model(job), example_input(job)
    names = {"input_names": [job.input_name], "output_names": [job.output_name]}
    try:
        with _quiet(), torch.inference_mode(False), torch.no_grad():
            program = torch.onnx.export(model, (x,), None, dynamo=True, opset_version=job.opset,
                                        dynamic_shapes=_dynamic_shapes(job), optimize=True,
                                        verbose=False, **names)
            program.save(str(path))
        return "dynamo"
    except Exception as exc:  # noqa: BLE001 - any exporter failure: try the other exporter
        from ..fileio import storage_error

        full = storage_error(exc, path)
        if full is not None:  # a full disk fails the other exporter too: say so now
            raise full from None
        job.log(f"  note: the dynamo exporter failed for {job.meta.arch} ({exporter_reason(exc)}); "
                f"using the TorchScript exporter")
    axes = None
    if job.dynamic:
        spatial = {0: "batch", 1: "height", 2: "width"} if job.preprocess else {0: "batch", 2: "height", 3: "width"}
        axes = {job.input_name: spatial,
                job.output_name: {0: "batch", 1: "height", 2: "width"} if job.argmax
                else {0: "batch", 2: "height", 3: "width"}}
    with _quiet(), torch.no_grad():
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=job.opset,
                          dynamic_axes=axes, do_constant_folding=True, **names)
    return "torchscript"


def slim(model):
    import onnxslim

    with _quiet():
        return onnxslim.slim(model)


def set_metadata(model, job: ExportJob, precision: str, **extra) -> None:
    io_ = job.io(precision, **extra)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_META_KEY, pack(job.meta, io_)
    model.producer_name = "cityseg-deploy"
    model.doc_string = f"{job.meta.arch} ({job.meta.label_set}) {precision}"


def check_model(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise CitysegError(f"{path.name}: the exported graph fails onnx.checker "
                           f"({first_line(exc, 200)}); report it with the model name") from None


# The fp32 graph of the last few jobs (serialised), so that a profile exporting fp32, fp16 and int8
# of one checkpoint runs the exporter once.  Keyed by the checkpoint hash and export settings.
_GRAPHS: dict[str, bytes] = {}
_GRAPHS_MAX = 4


def build_fp32_graph(job: ExportJob, path: Path):
    """Export + slim + metadata, written to ``path`` (a temporary). Returns the ModelProto."""
    import json

    import onnx

    if not OPSET_RANGE[0] <= job.opset <= OPSET_RANGE[1]:
        raise CitysegError(f"--opset {job.opset}: choose {OPSET_RANGE[0]}..{OPSET_RANGE[1]} "
                           f"(TensorRT 10 and onnxruntime both read these)")
    key = json.dumps(job.settings_key(), sort_keys=True)
    if key in _GRAPHS:
        Path(path).write_bytes(_GRAPHS[key])
        return onnx.load(str(path))
    exporter = torch_to_onnx(job, path)
    model = slim(onnx.load(str(path)))
    set_metadata(model, job, "fp32", exporter=exporter)
    onnx.save(model, str(path))
    data = model.SerializeToString()
    if len(data) < 256 << 20:
        while len(_GRAPHS) >= _GRAPHS_MAX:
            _GRAPHS.pop(next(iter(_GRAPHS)))
        _GRAPHS[key] = data
    return model
