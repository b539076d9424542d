"""What every export format shares: the job (source model, shapes, options), the result, images.

An :class:`ExportJob` is built once by :func:`cityseg_deploy.export.export` from the checkpoint
(or from a project ONNX file for the formats that compile one); each format module turns a job
into one artifact and returns an :class:`ExportResult`.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import CitysegError
from ..models.checkpoint import ModelMeta


@dataclass
class ExportResult:
    """One written artifact: where, what, how long it took, how big, what the checks measured."""

    path: Path
    format: str
    precision: str
    seconds: float
    size_mb: float
    checks: dict[str, Any] = field(default_factory=dict)
    intermediates: list["ExportResult"] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.path} ({self.format} {self.precision}, {self.seconds:.1f}s, {self.size_mb:.1f} MB)"


@dataclass
class ExportJob:
    """Everything a format needs to know; built by ``export()``, read by the format modules."""

    source: Path                       # the checkpoint (or project ONNX) the user named
    meta: ModelMeta
    source_sha256: str
    size: tuple[int, int]              # (H, W) of the exported graph (the opt shape if dynamic)
    batch: int = 1
    dynamic: bool = False
    preprocess: bool = False           # uint8 NHWC input, normalisation inside the graph
    argmax: bool = False               # uint8 N x H x W labels out instead of logits
    opset: int = 18
    calib_data: Path | None = None     # root whose train split calibrates int8
    calib_images: int = 32
    data: Path | None = None           # root whose val split checks accuracy (labels → mIoU)
    verify_images: int = 8
    keep_fp32: str | None = None       # None | "auto" | "name1,name2"
    int8_method: str | None = None     # OpenVINO int8: "qdq" | "nncf"
    int8_layout: str | None = None     # ONNX int8 Q/DQ form: "tensorrt" (default) | "onnxruntime"
    device: str = "cpu"
    verify: bool = True
    workspace_gb: float = 4.0
    opt_level: int = 3
    source_onnx: Path | None = None    # a project ONNX to compile instead of exporting one
    calibration: str | None = None     # int8 calibration: "minmax" (default) | "percentile" | "entropy"
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

    # -- images ---------------------------------------------------------------------------------
    def images(self, split: str, limit: int, *, root: Path | None = None,
               labels: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None, str]:
        """(N×H×W×3 uint8 RGB at the export size, N×H×W labels or None, description).

        ``root`` (or ``data`` / ``calib_data``) gives real images; without one, seeded random
        images stand in and the description says so.
        """
        given = root
        root = root or (self.data if split == "val" else self.calib_data) or self.data or self.calib_data
        # Say so when the images come from the other option's root (mIoU on --calib-data's val split).
        borrowed = ""
        if given is None and root is not None:
            usual = self.data if split == "val" else self.calib_data
            if usual is None:
                borrowed = f" (the {split} split of {'--data' if root == self.data else '--calib-data'})"
        if root is not None:
            from ..data.cityscapes import (CityscapesDataset, check_root, image_files, resize_pair)
            from ..fileio import read_rgb
            from ..labels import LABEL_SETS

            files = image_files(check_root(root), split)
            if not files:
                raise CitysegError(f"{root}: no images in the {split!r} split; point --data/--calib-data "
                                   f"at a Cityscapes root (leftImg8bit/{split}/...)")
            if not labels or self.meta.label_set not in LABEL_SETS:
                # Calibration (and a model of another label set, coco21/custom2) needs images
                # only: no label files are read, so no label set has to match.
                ims = np.stack([resize_pair(read_rgb(f), None, tuple(self.size))[0]
                                for f in files[:limit]])
                return ims, None, f"{len(ims)} {split} images of {root}{borrowed}"
            ds = CityscapesDataset(root, split, label_set=self.meta.label_set, size=tuple(self.size))
            pairs = [ds[i] for i in range(min(limit, len(ds)))]
            ims = np.stack([p[0] for p in pairs])
            lab = np.stack([p[1] for p in pairs]) if labels and pairs[0][1] is not None else None
            return ims, lab, f"{len(ims)} {split} images of {root}{borrowed}"
        rng = np.random.default_rng(seed)
        h, w = self.size
        ims = rng.integers(0, 256, size=(min(limit, 4), h, w, 3), dtype=np.uint8)
        return ims, None, f"{len(ims)} random images (no --data/--calib-data given)"

    def to_input(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC images → what the graph takes (uint8 NHWC or normalised float NCHW)."""
        if self.preprocess:
            return np.ascontiguousarray(images)
        mean = np.asarray(self.meta.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.meta.std, np.float32).reshape(1, 3, 1, 1)
        x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        return np.ascontiguousarray((x - mean) / std)

    def batches(self, x: np.ndarray):
        """Split ``x`` into chunks the graph accepts (fixed batch: the last one padded); yields
        (chunk, n_real)."""
        step = x.shape[0] if self.dynamic else self.batch
        if self.dynamic:
            step = max(1, min(self.batch, x.shape[0]))
        for i in range(0, x.shape[0], step):
            chunk = x[i:i + step]
            n = chunk.shape[0]
            if not self.dynamic and n < step:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - n, axis=0)])
            yield chunk, n


def hash_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(str(Path(p).name).encode())
        digest.update(Path(p).read_bytes())
    return digest.hexdigest()


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
