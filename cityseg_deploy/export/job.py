"""The export job: the source model, the graph's shapes and io, and the options of one export.

An :class:`ExportJob` is built once by :func:`cityseg_deploy.export.export` from the checkpoint
(or from a project ONNX file for the formats that compile one); each format module turns a job
into one artifact and returns an :class:`~cityseg_deploy.export.result.ExportResult`.  The
option fields take their defaults from the one table of options (``export/options.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .options import JOB_DEFAULTS as D

if TYPE_CHECKING:
    from ..models.checkpoint import ModelMeta


@dataclass
class ExportJob:
    """Everything a format needs to know; built by ``export()``, read by the format modules."""

    source: Path                       # the checkpoint (or project ONNX) the user named
    meta: ModelMeta
    source_sha256: str
    size: tuple[int, int]              # (H, W) of the exported graph (the opt shape if dynamic)
    batch: int = D["batch"]
    dynamic: bool = D["dynamic"]
    preprocess: bool = D["preprocess"]     # uint8 NHWC input, normalisation inside the graph
    argmax: bool = D["argmax"]             # uint8 N x H x W labels out instead of logits
    opset: int = D["opset"]
    calib_data: Path | None = D["calib_data"]  # root whose train split calibrates int8
    calib_images: int = D["calib_images"]
    data: Path | None = D["data"]          # root whose val split checks accuracy (labels → mIoU)
    verify_images: int = D["verify_images"]
    keep_fp32: str | None = D["keep_fp32"]     # None | "auto" | "name1,name2"
    int8_method: str | None = D["int8_method"]  # OpenVINO int8: "qdq" | "nncf"
    int8_layout: str | None = D["int8_layout"]  # ONNX int8 Q/DQ form: "tensorrt" | "onnxruntime"
    device: str = D["device"]
    verify: bool = D["verify"]
    workspace_gb: float = D["workspace_gb"]
    opt_level: int = D["opt_level"]
    calibration: str | None = D["calibration"]  # int8: "minmax" (default) | "percentile" | "entropy"
    source_onnx: Path | None = None    # a project ONNX to compile instead of exporting one
    ignored_scope: tuple[str, ...] = ()  # NNCF: OpenVINO op names left in float (accuracy control)
    log: Callable[[str], None] = print
    _model: Any = None

    # -- the PyTorch model, loaded once ------------------------------------------------------
    def model(self):
        if self._model is None:
            from ..models.checkpoint import load_checkpoint

            self._model, _ = load_checkpoint(self.source)
        return self._model

    @property
    def io_input(self) -> str:
        return "uint8_nhwc" if self.preprocess else "float_nchw"

    @property
    def io_output(self) -> str:
        return "labels" if self.argmax else "logits"

    @property
    def input_name(self) -> str:
        return "images"

    @property
    def output_name(self) -> str:
        return "labels" if self.argmax else "logits"

    def io(self, precision: str, **extra: Any) -> dict[str, Any]:
        import onnx
        import torch

        io = {"input": self.io_input, "output": self.io_output, "precision": precision,
              "dynamic": self.dynamic, "batch": self.batch, "size": list(self.size),
              "input_name": self.input_name, "output_name": self.output_name,
              "source_sha256": self.source_sha256, "source": self.source.name,
              "opset": self.opset, "torch_version": torch.__version__,
              "onnx_version": onnx.__version__}
        io.update(extra)
        return io

    def example_shape(self) -> tuple[int, ...]:
        h, w = self.size
        return (self.batch, h, w, 3) if self.preprocess else (self.batch, 3, h, w)

    def output_shape(self) -> tuple[int, ...]:
        h, w = self.size
        return (self.batch, h, w) if self.argmax else (self.batch, self.meta.num_classes, h, w)

    def settings_key(self) -> dict[str, Any]:
        """What makes two exports of one checkpoint the same graph (for the calibration cache)."""
        return {"source_sha256": self.source_sha256, "size": list(self.size), "batch": self.batch,
                "dynamic": self.dynamic, "preprocess": self.preprocess, "argmax": self.argmax,
                "opset": self.opset}
