"""Losses: CE and soft Dice ignore 255 pixels; aux weighting; all-void crops give 0, not nan."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cityseg_deploy.training.losses import SegmentationLoss, dice_loss


def _batch(seed=0, classes=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 8, 12, generator=g)
    target = torch.randint(0, classes, (2, 8, 12), generator=g)
    target[:, :3] = 255
    return logits, target


def test_dice_ignores_void_pixels_in_prediction_and_target():
    logits, target = _batch()
    changed = logits.clone()
    changed[:, :, :3] = torch.randn_like(changed[:, :, :3]) * 10  # only void pixels change
    assert torch.allclose(dice_loss(logits, target), dice_loss(changed, target))
    perfect = F.one_hot(target.clamp(max=4), 5).permute(0, 3, 1, 2).float() * 100
    perfect[:, :, :3] = 0
    assert float(dice_loss(perfect, target)) < 1e-3


def test_cross_entropy_matches_torch_with_ignore_index():
    logits, target = _batch(1)
    expected = F.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(SegmentationLoss("ce")(logits, target), expected)
    both = SegmentationLoss("ce+dice", dice_weight=0.5)(logits, target)
    assert torch.allclose(both, expected + 0.5 * dice_loss(logits, target))


def test_aux_head_weighting_and_all_void_batch():
    logits, target = _batch(2)
    aux = logits.flip(1)
    loss = SegmentationLoss("ce", aux_weight=0.4)
    expected = loss.single(logits, target) + 0.4 * loss.single(aux, target)
    assert torch.allclose(loss({"out": logits, "aux": aux}, target), expected)
    void = torch.full_like(target, 255)
    logits.requires_grad_(True)
    value = SegmentationLoss("ce+dice")(logits, void)
    assert torch.isfinite(value) and float(value.detach()) == 0.0
    value.backward()
    assert torch.isfinite(logits.grad).all()
