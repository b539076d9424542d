"""Model registry: builders register themselves with a decorator, as in timm.

Each entry carries a *default config* as data (mean/std of RGB/255, input size, label set), so
a checkpoint, an export and a runner all know how to feed the network without asking the user.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

from ..errors import CitysegError, first_line, short_repr

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str  # "deeplabv3" | "unet" | "denseaspp"
    description: str
    default_cfg: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, family: str, description: str = "", **default_cfg: Any):
    """Decorator: register ``builder`` under ``name`` with its default config.

    ``default_cfg`` keys: ``mean``, ``std`` (normalisation of RGB/255), ``input_size`` (H, W),
    ``label_set`` ("cityscapes19" / "cityscapes10"), ``num_classes``.
    """

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        cfg = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (512, 1024),
               "label_set": "cityscapes19", "num_classes": 19}
        cfg.update(default_cfg)
        _REGISTRY[name] = ModelEntry(name, builder, family, description or (builder.__doc__ or "").strip().split("\n")[0], cfg)
        return builder

    return wrap


def _ensure_loaded() -> None:
    # Importing the model modules fills the registry.
    from . import deeplabv3, denseaspp, unet  # noqa: F401


def get_entry(arch: str) -> ModelEntry:
    _ensure_loaded()
    if arch not in _REGISTRY:
        close = difflib.get_close_matches(str(arch)[:100], list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise CitysegError(f"unknown architecture {short_repr(arch)}{hint} (see 'cityseg models')")
    return _REGISTRY[arch]


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_default_cfg(arch: str) -> dict[str, Any]:
    return dict(get_entry(arch).default_cfg)


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build ``arch`` with keyword arguments (``num_classes`` defaults to the entry's)."""
    entry = get_entry(arch)
    kwargs.setdefault("num_classes", entry.default_cfg["num_classes"])
    try:
        return entry.builder(**kwargs)
    except TypeError as exc:
        raise CitysegError(f"architecture {short_repr(arch)}: bad arguments {short_repr(kwargs, 200)}: "
                           f"{first_line(exc)}") from None
