"""Segmentation losses: cross-entropy (255 ignored), soft Dice (255 masked), aux-head weighting.

Why mask Dice by hand: ``F.cross_entropy(ignore_index=255)`` drops void pixels, but a soft Dice
over softmax probabilities has no such switch; void pixels must be removed from both the
prediction and the one-hot target, or the network is rewarded for predicting "nothing" on them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..labels import IGNORE_INDEX


def dice_loss(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = IGNORE_INDEX,
              eps: float = 1.0) -> torch.Tensor:
    """Multi-class soft Dice loss, ``1 - mean_c(2|P∩T| + eps) / (|P| + |T| + eps)``.

    ``logits`` NxCxHxW, ``target`` NxHxW int64.  Sums run over the batch and the valid pixels of
    each class (as milesial's ``multiclass_dice_coeff``); pixels whose target is ``ignore_index``
    count in neither the prediction nor the target.
    """
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1)                           # Nx1xHxW
    probs = logits.float().softmax(dim=1) * valid
    safe_target = target.masked_fill(target == ignore_index, 0)
    one_hot = F.one_hot(safe_target, num_classes).permute(0, 3, 1, 2).to(probs.dtype) * valid
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    cardinality = probs.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + eps) / (cardinality + eps)
    return 1.0 - dice.mean()


class SegmentationLoss(nn.Module):
    """``kind`` "ce" or "ce+dice" on the main output, plus ``aux_weight`` × the same on ``aux``.

    ``forward(output, target)`` takes a logits tensor or DeepLabV3's training dict
    ``{"out", "aux"}`` and returns the scalar loss.
    """

    def __init__(self, kind: str = "ce", *, dice_weight: float = 1.0, aux_weight: float = 0.0,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if kind not in ("ce", "ce+dice"):
            raise ValueError(f"unknown loss {kind!r}")
        self.kind = kind
        self.dice_weight = dice_weight
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index

    def single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # sum / count instead of reduction="mean": a crop holding only void pixels gives 0, not nan
        count = (target != self.ignore_index).sum().clamp(min=1)
        loss = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index,
                               reduction="sum") / count
        if self.kind == "ce+dice":
            loss = loss + self.dice_weight * dice_loss(logits, target, ignore_index=self.ignore_index)
        return loss

    def forward(self, output: torch.Tensor | dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(output, dict):
            loss = self.single(output["out"], target)
            if "aux" in output and self.aux_weight > 0:
                loss = loss + self.aux_weight * self.single(output["aux"], target)
            return loss
        return self.single(output, target)
