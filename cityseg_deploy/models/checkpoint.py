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
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CitysegError, short_repr
from ..fileio import atomic_path
from .safe_load import load_weights_file

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
    def from_dict(cls, data: Any, *, where: str = "model metadata") -> "ModelMeta":
        """Metadata read from a file, checked first (types and bounds: see :func:`check_meta_dict`)."""
        check_meta_dict(data, where)
        known = {f for f in cls.__dataclass_fields__}
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


# Bounds on numbers read from files, checked before anything is allocated from them.
# Labels travel as uint8 maps in which 255 means "ignore": at most 255 classes.
MAX_CLASSES = 255
# Largest input side a checkpoint/artifact may claim: 4x a Cityscapes frame's width.
MAX_INPUT_SIDE = 8192
_REQUIRED = ("arch", "arch_args", "label_set", "class_names", "palette", "mean", "std", "input_size")


# Bounds on the free-form parts of the metadata (``arch_args``, ``extra``): a pickle can share one
# list between many places, so 270 KB hold a 2^60-element nested list; every walk, copy or repr
# of it (dataclasses.asdict, json.dumps, an error message) would never end.
MAX_META_NODES = 100_000
MAX_META_DEPTH = 32
MAX_META_TEXT = 65_536
_PLAIN_LEAVES = (str, int, float, bool, type(None))


def check_plain(value: Any, where: str, field: str) -> None:
    """Refuse ``value`` unless it is plain data (numbers, strings, lists, tuples, mappings with
    string keys) of at most :data:`MAX_META_NODES` values and :data:`MAX_META_DEPTH` levels.

    Every visit counts, shared references included, so a bomb stops after the budget's worth of
    steps instead of being walked (or printed) in full.
    """
    def bad(why: str) -> CitysegError:
        return CitysegError(f"{where}: metadata field {field!r} {why}; re-create the file with cityseg")

    budget = MAX_META_NODES
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise bad(f"holds more than {MAX_META_NODES} values (shared references counted "
                      f"each time they are reached)")
        if depth > MAX_META_DEPTH:
            raise bad(f"is nested more than {MAX_META_DEPTH} levels deep")
        if isinstance(item, dict):
            children = list(item.items()) if len(item) <= budget else None
            if children is None:
                raise bad(f"holds more than {MAX_META_NODES} values")
            for key, child in children:
                if not isinstance(key, str) or len(key) > 256:
                    raise bad("has a key that is not a short string")
                stack.append((child, depth + 1))
        elif isinstance(item, (list, tuple)):
            if len(item) > budget:
                raise bad(f"holds more than {MAX_META_NODES} values")
            stack.extend((child, depth + 1) for child in item)
        elif not isinstance(item, _PLAIN_LEAVES):
            raise bad(f"holds a {type(item).__name__}; only numbers, strings, lists and mappings")
        elif isinstance(item, str) and len(item) > MAX_META_TEXT:
            raise bad(f"holds a string of {len(item)} characters (at most {MAX_META_TEXT})")
        elif isinstance(item, int) and item.bit_length() > 256:
            raise bad("holds an integer too large to be a setting")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def check_meta_dict(data: Any, where: str = "model metadata") -> None:
    """Refuse metadata whose types or numbers are out of bounds, naming the field.

    Why here: every stage builds networks, buffers and dummy inputs from these numbers, so a
    corrupt or hostile file claiming ``num_classes=10**12`` or a 10^6-pixel side must stop with
    one clear line before any allocation, not as a MemoryError or a backend traceback.
    """
    def bad(field: str, why: str) -> CitysegError:
        return CitysegError(f"{where}: metadata field {field!r} {why}; re-create the file with cityseg")

    if not isinstance(data, dict):
        raise CitysegError(f"{where}: metadata is a {type(data).__name__}, not a mapping; "
                           f"re-create the file with cityseg")
    missing = sorted(set(_REQUIRED) - set(data))
    if missing:
        raise CitysegError(f"{where}: model metadata lacks {missing}")
    if not isinstance(data["arch"], str) or not isinstance(data["label_set"], str):
        raise bad("arch" if not isinstance(data["arch"], str) else "label_set", "must be a string")
    args = data["arch_args"]
    if not isinstance(args, dict) or not all(isinstance(k, str) and k.isidentifier() for k in args):
        raise bad("arch_args", "must map argument names to values")
    check_plain(args, where, "arch_args")
    if "extra" in data:
        check_plain(data["extra"], where, "extra")
    names = data["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad("class_names", "must be a list of strings")
    claimed = args.get("num_classes", len(names))
    if not _is_int(claimed) or not 1 <= claimed <= MAX_CLASSES:
        raise bad("arch_args.num_classes", f"is {short_repr(claimed)}: expected 1 to {MAX_CLASSES} "
                                           f"(labels are uint8, 255 = ignore)")
    if len(names) != claimed:
        raise bad("class_names", f"has {len(names)} names for {claimed} classes")
    for key, value in args.items():
        if _is_int(value) and not 0 <= value <= 4 * MAX_INPUT_SIDE:
            raise bad(f"arch_args.{key}", f"is {value}: out of range")
    palette = data["palette"]
    if (not isinstance(palette, list) or len(palette) != claimed
            or not all(isinstance(c, list) and len(c) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in c)
                       for c in palette)):
        raise bad("palette", f"must hold {claimed} [r, g, b] colours of 0-255")
    for key in ("mean", "std"):
        values = data[key]
        if (not isinstance(values, list) or not 1 <= len(values) <= 4
                or not all(_is_number(v) for v in values)):
            raise bad(key, "must be a list of 1 to 4 finite numbers")
    if any(v == 0 for v in data["std"]):
        raise bad("std", "holds a 0 (division by zero when normalising)")
    size = data["input_size"]
    if (not isinstance(size, list) or len(size) != 2
            or not all(_is_int(v) and 1 <= v <= MAX_INPUT_SIDE for v in size)):
        raise bad("input_size", f"is {short_repr(size)}: expected [H, W] of 1 to {MAX_INPUT_SIDE} pixels")
    for key in ("format_version",):
        if key in data and not _is_int(data[key]):
            raise bad(key, "must be an integer")
    if "extra" in data and not isinstance(data["extra"], dict):
        raise bad("extra", "must be a mapping")


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
    payload = load_weights_file(path, map_location=map_location, what="checkpoint file",
                                hint="a cityseg checkpoint holds only tensors and plain values; "
                                     "re-create it with cityseg (train or convert-weights)")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CitysegError(f"{path}: not a cityseg checkpoint; convert foreign weights with "
                           f"'cityseg convert-weights {path} --arch ARCH --out CKPT'")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CitysegError(f"{path}: checkpoint format {payload['format_version']} is newer than "
                           f"this cityseg ({FORMAT_VERSION}); upgrade cityseg-deploy")
    return payload


def read_meta(path: str | os.PathLike) -> ModelMeta:
    return ModelMeta.from_dict(read_checkpoint(path).get("meta"), where=str(path))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, ModelMeta]:
    """Rebuild the network from the metadata and load its weights (strict); eval mode."""
    from .registry import build_model

    payload = read_checkpoint(path, map_location)
    meta = ModelMeta.from_dict(payload.get("meta"), where=str(path))
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CitysegError(f"{path}: its 'state_dict' is not a mapping of tensors; re-create the checkpoint")
    # Shapes first, on the meta device (nothing allocated): a file whose metadata claims a far
    # larger network than its tensors hold is refused before the network is built for real.
    with torch.device("meta"):
        skeleton = build_model(meta.arch, **meta.arch_args)
    own = skeleton.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
                  for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        raise CitysegError(f"{path}: weights do not fit {meta.arch}: missing {missing[:5]}"
                           f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                           f"{'...' if len(unexpected) > 5 else ''}, shapes (file vs "
                           f"{short_repr(meta.arch_args, 200)}) {mismatched[:3]}{'...' if len(mismatched) > 3 else ''}")
    del skeleton
    model = build_model(meta.arch, **meta.arch_args)
    model.load_state_dict(state_dict, strict=True)
    return model.eval(), meta
