"""DenseASPP (Yang et al., CVPR 2018, "DenseASPP for Semantic Segmentation in Street Scenes").

A DenseNet at output stride 8 feeds five atrous blocks (rates 3, 6, 12, 18, 24) connected
*densely*: each block reads the backbone features plus every earlier block's output, so the
stack covers a dense range of receptive fields rather than ASPP's few parallel ones.  Each new
block output is concatenated **in front** of the running feature (``cat((aspp_k, feature))``), as
in the released model, so the classifier's input channels are in the released order.

Module names are the released model's (``features.*``, ``ASPP_3``..``ASPP_24``,
``classification.1``) with the PyTorch-0.3 dotted layer names made legal (``norm.1`` →
``norm1``, ``conv.2`` → ``conv2``): :func:`cityseg_deploy.models.convert.filter_denseaspp_original`
is a pure rename.

Deliberate deviations from the release: its ASPP BatchNorms use ``momentum=0.0003`` (TensorFlow's
decay 0.9997 carried into PyTorch's opposite convention, so running statistics would barely
move); ours use PyTorch's default.  Its head upsamples ×8 by scale factor, which gives the input
size only when the input divides by 8; ours interpolates (bilinear, ``align_corners=True``)
straight to the input size, identical to ×8 for sizes divisible by 8 and the same corner-aligned
mapping otherwise, so every input size comes back at its own size.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .densenet import DenseNetOS8
from .registry import register_model

DENSEASPP_MEAN = (0.290101, 0.328081, 0.286964)
DENSEASPP_STD = (0.182954, 0.186566, 0.184475)
ASPP_RATES = (3, 6, 12, 18, 24)


class DenseAsppBlock(nn.Module):
    """[BN] → ReLU → 1x1 conv (``mid``) → BN → ReLU → 3x3 conv at ``rate`` (``out``) → Dropout2d.

    The first block has no leading BN: it reads ``norm5``'s already-normalised output.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, rate: int, *,
                 drop_rate: float = 0.1, bn_start: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels) if bn_start else None
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1)
        self.norm2 = nn.BatchNorm2d(mid_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid_channels, out_channels, 3, padding=rate, dilation=rate)
        self.drop = nn.Dropout2d(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Without the leading BN, ReLU must not overwrite the shared input feature in place.
        y = self.relu1(self.norm1(x)) if self.norm1 is not None else F.relu(x)
        y = self.conv1(y)
        y = self.conv2(self.relu2(self.norm2(y)))
        return self.drop(y)


class DenseASPP(nn.Module):
    """DenseNet-OS8 → five densely connected :class:`DenseAsppBlock` → Dropout2d → 1x1 → upsample."""

    def __init__(self, backbone: DenseNetOS8, *, num_classes: int = 19, mid_channels: int = 512,
                 aspp_channels: int = 128, rates: Sequence[int] = ASPP_RATES, drop_rate: float = 0.1) -> None:
        super().__init__()
        self.features = backbone.features
        self.rates = tuple(int(r) for r in rates)
        channels = backbone.out_channels
        for i, rate in enumerate(self.rates):
            self.add_module(f"ASPP_{rate}", DenseAsppBlock(channels, mid_channels, aspp_channels, rate,
                                                           drop_rate=drop_rate, bn_start=i > 0))
            channels += aspp_channels
        self.classification = nn.Sequential(nn.Dropout2d(drop_rate), nn.Conv2d(channels, num_classes, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        feature = self.features(x)
        for rate in self.rates:
            feature = torch.cat((getattr(self, f"ASPP_{rate}")(feature), feature), dim=1)
        logits = self.classification(feature)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


_CFG = dict(mean=DENSEASPP_MEAN, std=DENSEASPP_STD, label_set="cityscapes19", num_classes=19)


@register_model("denseaspp161", family="denseaspp",
                description="DenseASPP, DenseNet-161 output stride 8, rates 3-24 (released model's layout)",
                input_size=(512, 1024), **_CFG)
def denseaspp161(*, num_classes: int = 19) -> DenseASPP:
    """The report's DenseASPP: DenseNet-161 (growth 48, init 96, 6-12-36-24), ASPP 512→128."""
    backbone = DenseNetOS8(growth_rate=48, num_init_features=96, block_config=(6, 12, 36, 24), bn_size=4)
    return DenseASPP(backbone, num_classes=num_classes, mid_channels=512, aspp_channels=128)


@register_model("denseaspp121", family="denseaspp",
                description="DenseASPP, DenseNet-121 output stride 8, ASPP 128→64 (release's 121 config)",
                input_size=(512, 1024), **_CFG)
def denseaspp121(*, num_classes: int = 19) -> DenseASPP:
    """DenseNet-121 (growth 32, init 64, 6-12-24-16) with the release's 121 head (128→64)."""
    backbone = DenseNetOS8(growth_rate=32, num_init_features=64, block_config=(6, 12, 24, 16), bn_size=4)
    return DenseASPP(backbone, num_classes=num_classes, mid_channels=128, aspp_channels=64)


@register_model("denseaspp_small", family="denseaspp",
                description="DenseASPP small preset: DenseNet growth 8, 2-2-2-2 blocks, ASPP 32→16",
                input_size=(128, 256), **_CFG)
def denseaspp_small(*, num_classes: int = 19, growth_rate: int = 8, num_init_features: int = 16,
                    block_config: Sequence[int] = (2, 2, 2, 2)) -> DenseASPP:
    """Same classes as :func:`denseaspp161`, tiny, for CPU training in minutes."""
    backbone = DenseNetOS8(growth_rate=growth_rate, num_init_features=num_init_features,
                           block_config=tuple(block_config), bn_size=2)
    return DenseASPP(backbone, num_classes=num_classes, mid_channels=32, aspp_channels=16)
