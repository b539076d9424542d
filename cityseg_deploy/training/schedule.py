"""The optimiser and learning-rate schedule a recipe names, and retargeting a restored schedule.

Why apart from the loop: ``--resume`` restores these objects from ``last.pt`` and may then point
them at a new run length (:func:`retarget_scheduler`); both the set-up and the resume step use them.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from .recipe import Recipe


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay)


class PolyFactor:
    """The poly schedule's lr factor ``max(0, 1 - step / total) ** power``.

    A callable object rather than a lambda so that its ``total`` is an attribute: LambdaLR saves
    and restores it with the scheduler state, and :func:`retarget_scheduler` can change it when a
    resumed run asks for more (or fewer) epochs.
    """

    def __init__(self, total: int, power: float) -> None:
        self.total, self.power = max(1, int(total)), float(power)

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.total) ** self.power


def build_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer, total_steps: int):
    """(scheduler or None, when it steps: "step" | "epoch" (with val mIoU) | None)."""
    if recipe.scheduler == "poly":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, PolyFactor(total_steps, recipe.poly_power)), "step"
    if recipe.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps)), "step"
    if recipe.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=recipe.plateau_factor, patience=recipe.plateau_patience), "epoch"
    return None, None


def retarget_scheduler(scheduler: Any, total_steps: int, *, poly_power: float | None = None) -> int | None:
    """Point a just-restored per-step schedule at ``total_steps``; return the old total if it changed.

    ``poly_power``: the resumed run's poly exponent (a ``--set poly_power=...`` on resume);
    the restored factor's own power is kept when None.  Changing it is reported by
    :func:`poly_power_of` before/after, not by the return value.

    Why: on ``--resume`` with another epoch count (or batch size) the restored state still holds
    the old run's length (cosine's ``T_max``, the poly factor's ``total``) and the optimiser holds
    the lr of the old run's last step; a finished 2-epoch run resumed to 3 epochs would train at
    lr 0.  The state is restored first (step count, base lrs), then the total is set to the new
    one and the current lr recomputed in closed form, so training continues exactly where a fresh
    run of the new length would be at this step.  Poly's lr is always re-derived (bit-identical
    when nothing changed; also right for a checkpoint from before ``PolyFactor``, which saved no
    total); cosine's only when the total changed.  Epoch schedules (ReduceLROnPlateau) are left
    as restored.
    """
    total = max(1, int(total_steps))
    old: int | None = None
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) and all(
            isinstance(f, PolyFactor) for f in scheduler.lr_lambdas):
        old = scheduler.lr_lambdas[0].total
        for factor in scheduler.lr_lambdas:
            factor.total = total
            if poly_power is not None:
                factor.power = float(poly_power)
        lrs = [base * factor(scheduler.last_epoch)
               for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    elif isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        old, scheduler.T_max = scheduler.T_max, total
        if old == total:
            return None  # keep the restored (recursively computed) lr: exact resume
        lrs = [scheduler.eta_min + (base - scheduler.eta_min)
               * (1 + math.cos(math.pi * scheduler.last_epoch / total)) / 2
               for base in scheduler.base_lrs]
    else:
        return None
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)
    return old if old != total else None


def poly_power_of(scheduler: Any) -> float | None:
    """The exponent of a poly schedule (None for any other schedule)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) and scheduler.lr_lambdas and all(
            isinstance(f, PolyFactor) for f in scheduler.lr_lambdas):
        return scheduler.lr_lambdas[0].power
    return None
