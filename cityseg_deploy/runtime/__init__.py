"""One ``Segmenter`` over every artifact kind: ``load(path, device=...)``.

The backend is picked by artifact kind in one table (:data:`BACKENDS`); adding a backend is one
file here and one row there.  ``"model.onnx@int8"``-style specs (bench, check) are split by
:func:`parse_model_spec`.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from ..artifacts import artifact_kind
from ..errors import CitysegError
from ..models.checkpoint import ModelMeta
from .base import PRECISIONS, Segmenter, check_precision

# artifact kind -> (module, class)
BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("torch_backend", "TorchSegmenter"),
    "onnx": ("onnxruntime_backend", "OnnxRuntimeSegmenter"),
    "tensorrt": ("tensorrt_backend", "TensorRTSegmenter"),
    "aoti": ("aoti_backend", "AOTISegmenter"),
    "openvino": ("openvino_backend", "OpenVINOSegmenter"),
}


def backend_class(kind: str) -> type[Segmenter]:
    module, cls = BACKENDS[kind]
    return getattr(importlib.import_module(f".{module}", __name__), cls)


def parse_model_spec(spec: str | os.PathLike) -> tuple[str, str | None]:
    """``"ckpt.pt@bf16"`` → ``("ckpt.pt", "bf16")``; a plain path → ``(path, None)``."""
    text = str(spec)
    head, sep, tail = text.rpartition("@")
    if sep and tail in PRECISIONS and head:
        return head, tail
    return text, None


def load(path: str | os.PathLike, *, device: str = "cpu", precision: str | None = None,
         threads: int | None = None, **options: Any) -> Segmenter:
    """The ``Segmenter`` for any artifact (checkpoint, .onnx, engine, .pt2, OpenVINO IR).

    ``precision``: for a checkpoint fp32 | fp16 | bf16 (autocast); for OpenVINO fp32 | bf16
    (inference precision hint); graphs with baked-in precision refuse another.
    ``threads``: CPU threads.  ``options`` go to the backend (e.g. ``size=(H, W)``,
    ``compile=True``, ``cuda_graphs=True`` for torch; ``mode``/``streams`` for OpenVINO).
    """
    path, spec_precision = parse_model_spec(path)
    precision = check_precision(precision or spec_precision)
    kind = artifact_kind(Path(path))
    return backend_class(kind)(Path(path), device=device, precision=precision, threads=threads,
                               **options)


def open_artifact(path: str | os.PathLike, kind: str, *,
                  metadata: tuple[ModelMeta, dict[str, Any]] | None = None, device: str = "cpu",
                  precision: str | None = None, threads: int | None = None, **options: Any) -> Segmenter:
    """The ``Segmenter`` :func:`load` would give for an artifact not (yet) under its final name.

    Why: export checks the file it wrote, at its temporary name, through the runner users get.
    ``kind`` says what the suffix cannot; ``metadata`` is the (meta, io) about to go into the
    sidecar (TensorRT, AOTInductor) — without it the file's own metadata is read (ONNX, OpenVINO).
    The backend's load-time checks (metadata against the graph) run as for :func:`load`.
    """
    if kind not in BACKENDS or kind == "torch":
        raise CitysegError(f"{path}: open_artifact runs exported graphs "
                           f"({', '.join(k for k in BACKENDS if k != 'torch')}), not {kind!r}")
    return backend_class(kind)(Path(path), device=device, precision=check_precision(precision),
                               threads=threads, metadata=metadata, **options)


__all__ = ["BACKENDS", "Segmenter", "backend_class", "load", "open_artifact", "parse_model_spec"]
