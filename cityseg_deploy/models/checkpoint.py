"""The project's checkpoint format: weights plus everything later stages need to use them.

A checkpoint is a plain dict saved with ``torch.save`` and readable with
``torch.load(weights_only=True)`` (only tensors, numbers, strings, lists and dicts):

``{"format": "cityseg-checkpoint", "format_version": 1, "meta": {...}, "state_dict": {...},
"train_state": {...} (optional: optimiser, scheduler, scaler, epoch, RNG)}``

``meta`` (:class:`ModelMeta`) names the architecture and its arguments, the label set, class names,
palette, normalisation and input size, so export, runtime and check never ask the user for them.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CitysegError, first_line
from ..fileio import atomic_path

FORMAT_NAME = "cityseg-checkpoint"
FORMAT_VERSION = 1


@dataclass
class ModelMeta:
    """What a network predicts and how to feed it; travels with every artifact."""

    arch: str
    arch_args: dict[str, Any]
    label_set: str
    class_names: list[str]
    palette: list[list[int]]
    mean: list[float]
    std: list[float]
    input_size: list[int]
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelMeta":
        known = {f for f in cls.__dataclass_fields__}
        missing = {"arch", "arch_args", "label_set", "class_names", "palette", "mean", "std",
                   "input_size"} - set(data)
        if missing:
            raise CitysegError(f"model metadata lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def for_arch(cls, arch: str, *, label_set: str | None = None, input_size=None,
                 **arch_args: Any) -> "ModelMeta":
        """Metadata for a freshly built ``arch`` from its registry defaults and a label set."""
        from ..labels import get_label_set
        from .registry import get_default_cfg

        cfg = get_default_cfg(arch)
        labels = get_label_set(label_set or cfg["label_set"])
        arch_args = dict(arch_args)
        arch_args["num_classes"] = labels.num_classes
        return cls(arch=arch, arch_args=arch_args, label_set=labels.name,
                   class_names=list(labels.class_names), palette=[list(c) for c in labels.palette],
                   mean=list(cfg["mean"]), std=list(cfg["std"]),
                   input_size=list(input_size or cfg["input_size"]))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: ModelMeta, *,
                    train_state: dict[str, Any] | None = None) -> None:
    """Write ``model``'s weights and ``meta`` atomically (DDP/compiled wrappers unwrapped)."""
    module = getattr(model, "module", model)
    module = getattr(module, "_orig_mod", module)
    payload: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "meta": meta.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
    }
    if train_state is not None:
        payload["train_state"] = train_state
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load the raw checkpoint dict, checking that it is one of ours."""
    path = Path(path)
    if not path.is_file():
        raise CitysegError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CitysegError(f"{path}: empty file (0 bytes), not a checkpoint; re-create or remove it")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt zip, pickle with code, truncated file ...
        raise CitysegError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
                           f"{first_line(exc, 160)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CitysegError(f"{path}: not a cityseg checkpoint; convert foreign weights with "
                           f"'cityseg convert-weights {path} --arch ARCH --out CKPT'")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CitysegError(f"{path}: checkpoint format {payload['format_version']} is newer than "
                           f"this cityseg ({FORMAT_VERSION}); upgrade cityseg-deploy")
    return payload


def read_meta(path: str | os.PathLike) -> ModelMeta:
    return ModelMeta.from_dict(read_checkpoint(path)["meta"])


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, ModelMeta]:
    """Rebuild the network from the metadata and load its weights (strict); eval mode."""
    from .registry import build_model

    payload = read_checkpoint(path, map_location)
    meta = ModelMeta.from_dict(payload["meta"])
    model = build_model(meta.arch, **meta.arch_args)
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    if missing or unexpected:
        raise CitysegError(f"{path}: weights do not fit {meta.arch}: missing {list(missing)[:5]}"
                           f"{'...' if len(missing) > 5 else ''}, unexpected {list(unexpected)[:5]}"
                           f"{'...' if len(unexpected) > 5 else ''}")
    return model.eval(), meta
