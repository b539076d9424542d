"""Training room: recipes (YAML → dataclass), losses, the loop (train_one_epoch / evaluate / fit),
distributed set-up and the run's report.  ``cityseg train`` and ``cityseg quickstart`` call :func:`fit`.
"""
from __future__ import annotations

from .losses import SegmentationLoss, dice_loss
from .loop import TrainingInterrupted, evaluate, fit, train_one_epoch
from .recipe import Recipe, available_recipes, load_recipe, parse_override, recipe_from_dict

__all__ = ["Recipe", "SegmentationLoss", "TrainingInterrupted", "available_recipes", "dice_loss",
           "evaluate", "fit", "load_recipe", "parse_override", "recipe_from_dict", "train_one_epoch"]
