"""Training recipes: YAML files checked against a dataclass schema.

Why a schema: a recipe is the record of how a checkpoint was made (it travels in the checkpoint's
``meta.extra["recipe"]``), so a typo must fail before hours of training, naming the key, rather
than silently fall back to a default.  Unknown keys and wrong types raise :class:`CitysegError`.

Where recipes live: the repository's top-level ``training/`` folder, shipped inside the package
as ``cityseg_deploy/recipes`` (:mod:`cityseg_deploy.resources`).  ``--recipe`` takes a path, or a
bare name such as ``unet_small`` looked up there.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from .. import resources
from ..errors import CitysegError, short_repr
from ..yamlfile import parse_yaml, read_yaml


@dataclass
class Augment:
    """Training augmentations (data/transforms.py): random scale → crop → flip → jitter."""

    scale: list[float] = field(default_factory=lambda: [0.5, 2.0])  # resize factor range
    crop: Optional[list[int]] = None  # [H, W] crop after scaling; None = train_size
    hflip: float = 0.5                # probability of a left-right mirror
    jitter: bool = True               # photometric jitter (brightness/contrast/saturation/hue)


@dataclass
class Recipe:
    """Everything :func:`~cityseg_deploy.training.loop.fit` needs besides the data and output."""

    model: str                                      # registry arch name ('cityseg models')
    epochs: int
    batch_size: int
    lr: float
    arch_args: dict = field(default_factory=dict)   # extra builder kwargs (num_classes from label_set)
    label_set: Optional[str] = None                 # cityscapes19 | cityscapes10; None = arch default
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = 0.9                           # sgd only
    weight_decay: float = 0.0
    scheduler: Literal["none", "poly", "plateau", "cosine"] = "none"
    poly_power: float = 0.9
    plateau_patience: int = 5                       # epochs without val mIoU gain before lr *= factor
    plateau_factor: float = 0.1
    loss: Literal["ce", "ce+dice"] = "ce"
    dice_weight: float = 1.0
    aux_loss_weight: float = 0.0                    # > 0 turns on DeepLabV3's aux head
    train_size: Optional[list[int]] = None          # [H, W] images are resized to; None = arch default
    val_size: Optional[list[int]] = None            # [H, W] for validation; None = train_size
    augment: Augment = field(default_factory=Augment)
    freeze_bn: bool = False                         # BN layers in eval mode (batch 1 fine-tuning)
    grad_clip: Optional[float] = None               # max gradient norm
    early_stop_patience: Optional[int] = None       # stop after this many epochs without a better mIoU
    amp: Literal["auto", "fp16", "bf16", "off"] = "auto"
    seed: int = 0
    workers: int = 0
    init_weights: Optional[str] = None              # cityseg checkpoint to start from (fine-tuning)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def uses_aux(self) -> bool:
        return self.aux_loss_weight > 0


# --------------------------------------------------------------------------- validation
def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _convert(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked (and lightly coerced: int → float, '1e-5' → float) against ``hint``."""
    origin = typing.get_origin(hint)
    bad = CitysegError(f"recipe key '{key}': expected {_type_name(hint)}, got {short_repr(value)}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except CitysegError:
                continue
        raise bad
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise bad
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(hint)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise bad
        return _build(hint, value, prefix=f"{key}.")
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    if hint is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    raise TypeError(f"recipe schema: unsupported type {hint!r} for {key}")  # a bug, not user input


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        import difflib

        key = unknown[0]
        close = difflib.get_close_matches(str(key)[:100], list(fields), n=1)
        hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(fields)}"
        raise CitysegError(f"recipe key {short_repr(prefix + str(key))}: unknown{hint}")
    missing = [name for name, f in fields.items() if name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise CitysegError(f"recipe key '{prefix}{missing[0]}': required but missing")
    values = {k: _convert(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**values)


def _check_values(recipe: Recipe) -> None:
    def positive(key: str, value) -> None:
        if value is not None and value <= 0:
            raise CitysegError(f"recipe key {key!r}: must be positive, got {short_repr(value)}")

    positive("epochs", recipe.epochs)
    positive("batch_size", recipe.batch_size)
    positive("lr", recipe.lr)
    positive("early_stop_patience", recipe.early_stop_patience)
    positive("grad_clip", recipe.grad_clip)
    for key in ("weight_decay", "aux_loss_weight", "dice_weight", "workers"):
        if getattr(recipe, key) < 0:
            raise CitysegError(f"recipe key {key!r}: must not be negative")
    for key, size in (("train_size", recipe.train_size), ("val_size", recipe.val_size),
                      ("augment.crop", recipe.augment.crop)):
        if size is not None and (len(size) != 2 or min(size) <= 0):
            raise CitysegError(f"recipe key {key!r}: expected [H, W] of positive ints, got {short_repr(size)}")
    scale = recipe.augment.scale
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise CitysegError(f"recipe key 'augment.scale': expected [min, max] with 0 < min <= max, got {short_repr(scale)}")
    if not 0 <= recipe.augment.hflip <= 1:
        raise CitysegError("recipe key 'augment.hflip': a probability between 0 and 1")


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Validate a parsed recipe mapping (unknown key or wrong type → CitysegError naming it)."""
    if not isinstance(data, dict):
        raise CitysegError(f"recipe: expected a mapping of keys, got {type(data).__name__}")
    recipe = _build(Recipe, data)
    _check_values(recipe)
    return recipe


# --------------------------------------------------------------------------- files and overrides
def available_recipes() -> dict[str, Path]:
    """Bare recipe names → the files shipped with cityseg (``training/`` in the repository)."""
    return resources.available("recipe")


def resolve_recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A path to an existing file, or a bare name (``unet_small``) of a shipped recipe."""
    try:
        return resources.resolve("recipe", name_or_path)
    except CitysegError:
        names = ", ".join(available_recipes()) or "none found"
        raise CitysegError(f"recipe {str(name_or_path)!r}: no such file or recipe name; "
                           f"give a YAML path or one of: {names}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"augment.scale=[1, 1]"`` → ``("augment.scale", [1, 1])`` (value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise CitysegError(f"--set {short_repr(text)}: expected key=value, for example --set lr=0.001")
    value = parse_yaml(raw, f"--set {short_repr(text)}") if raw.strip() else None
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``augment.hflip``) in a nested copy of ``data``."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise CitysegError(f"--set {short_repr(dotted)}: {short_repr(part)} is not a mapping in the recipe")
            node = child
        node[parts[-1]] = value
    return data


def merge_resume_overrides(saved: dict[str, Any] | None, given: dict[str, Any]
                           ) -> tuple[dict[str, Any], list[str]]:
    """Overrides for a resumed run: those it was started with, then the ones given now.

    Returns (merged, notes): one note per override that the resume changes or adds, so that
    ``--resume`` alone continues the run as started and a deliberate change is said, never silent.
    """
    saved = dict(saved or {})
    notes = []
    for key, value in given.items():
        if key not in saved:
            notes.append(f"{key}={short_repr(value)} added on resume (the run was started without it)")
        elif saved[key] != value:
            notes.append(f"{key} changed on resume: {short_repr(saved[key])} -> {short_repr(value)}")
    return {**saved, **given}, notes


def load_recipe(name_or_path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read, override (dotted keys) and validate a recipe."""
    path = resolve_recipe_path(name_or_path)
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CitysegError(f"{path}: a recipe must be a mapping of keys")
    try:
        return recipe_from_dict(apply_overrides(data, overrides or {}))
    except CitysegError as exc:
        raise CitysegError(f"{path}: {exc}") from None
