"""Parameter and FLOP counts of the registered networks, without running them for real.

Counting uses :class:`torch.utils.flop_counter.FlopCounterMode` over a forward pass on the
``meta`` device: shapes propagate, no memory is allocated and no arithmetic runs, so even the
full networks at 1024x2048 count in well under a second.  FlopCounterMode counts convolutions and
matrix products (2 FLOPs per multiply-accumulate), which dominate these networks; norms,
activations and resizes are not counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .registry import build_model, get_entry, list_models


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, size: Sequence[int], *, batch: int = 1, in_channels: int = 3) -> int:
    """FLOPs of one eval forward pass at ``size`` (H, W) on the model's device (meta works)."""
    device = next(model.parameters()).device
    x = torch.empty(batch, in_channels, int(size[0]), int(size[1]), device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class ModelStats:
    name: str
    family: str
    params: int
    flops: int
    size: tuple[int, int]
    label_set: str
    input_size: tuple[int, int]
    description: str

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def gmacs(self) -> float:
        return self.flops / 2e9


def model_stats(arch: str, *, size: Sequence[int] | None = None, **kwargs: Any) -> ModelStats:
    """Params and FLOPs of ``arch`` at ``size`` (default: its registered input size)."""
    entry = get_entry(arch)
    cfg = entry.default_cfg
    hw = tuple(int(v) for v in (size or cfg["input_size"]))
    with torch.device("meta"):
        model = build_model(arch, **kwargs)
    in_channels = getattr(model, "n_channels", 3)
    return ModelStats(arch, entry.family, count_params(model), count_flops(model, hw, in_channels=in_channels),
                      hw, cfg["label_set"], tuple(cfg["input_size"]), entry.description)


def all_model_stats(*, size: Sequence[int] | None = None) -> list[ModelStats]:
    return [model_stats(name, size=size) for name in list_models()]


def format_table(rows: list[ModelStats]) -> str:
    """A plain-text table: name, family, params, GFLOPs at the counted size, label set, size, description."""
    header = ("name", "family", "params", "GFLOPs", "at", "label set", "input", "description")
    body = [(r.name, r.family, f"{r.params / 1e6:.2f}M", f"{r.gflops:.1f}", f"{r.size[0]}x{r.size[1]}",
             r.label_set, f"{r.input_size[0]}x{r.input_size[1]}", r.description) for r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *body]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1])
    return "\n".join(lines)
