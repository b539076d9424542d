"""DeepLabV3 (Chen et al., 2017, "Rethinking Atrous Convolution for Semantic Image Segmentation").

A dilated ResNet-50 (output stride 8) feeds Atrous Spatial Pyramid Pooling: parallel 3x3 convs at
several dilation rates plus an image-level pooling branch see context at several scales; their
concatenation is projected to 256 channels and classified, and the logits are upsampled
bilinearly to the input size.  An optional FCN head on layer3 adds an auxiliary loss in training.

Class and parameter names are torchvision's (``backbone.*``, ``classifier.*``,
``aux_classifier.*``) so a torchvision ``deeplabv3_resnet50`` state dict loads with
``strict=True``.  Unlike torchvision, the eval forward returns the logits tensor itself (the
toolchain's contract); in training mode with an aux head it returns ``{"out", "aux"}``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import IMAGENET_MEAN, IMAGENET_STD, register_model
from .resnet import ResNet


class ASPPConv(nn.Sequential):
    """One atrous branch: 3x3 conv with dilation ``rate`` → BN → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, rate: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class ASPPPooling(nn.Sequential):
    """Image-level features: global average → 1x1 conv → BN → ReLU, broadcast back to the map.

    It carries the context that very large rates lose once the dilated kernel outgrows the map.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """1x1 branch + one :class:`ASPPConv` per rate + :class:`ASPPPooling`, concatenated and
    projected (1x1 conv → BN → ReLU → Dropout 0.5) to ``out_channels``."""

    def __init__(self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )]
        branches += [ASPPConv(in_channels, out_channels, int(rate)) for rate in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """ASPP → 3x3 conv → BN → ReLU → 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int] = (12, 24, 36),
                 channels: int = 256) -> None:
        super().__init__(
            ASPP(in_channels, atrous_rates, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, num_classes, 1),
        )


class FCNHead(nn.Sequential):
    """The auxiliary head: 3x3 conv to in/4 channels → BN → ReLU → Dropout 0.1 → 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Conv2d(inter, num_classes, 1),
        )


class DeepLabV3(nn.Module):
    """Backbone → :class:`DeepLabHead` (→ optional :class:`FCNHead` on layer3) → bilinear upsample."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module, aux_classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        out = F.interpolate(self.classifier(features["out"]), size=size, mode="bilinear", align_corners=False)
        if self.aux_classifier is None or not self.training:
            return out
        aux = F.interpolate(self.aux_classifier(features["aux"]), size=size, mode="bilinear", align_corners=False)
        return {"out": out, "aux": aux}


def replace_classifier(model: DeepLabV3, num_classes: int) -> DeepLabV3:
    """Swap the last 1x1 convs for fresh ``num_classes`` ones (e.g. a COCO model → Cityscapes 19).

    Everything else, ASPP included, keeps its weights: fine-tuning starts from the source's features.
    """
    old = model.classifier[-1]
    model.classifier[-1] = nn.Conv2d(old.in_channels, num_classes, 1)
    if model.aux_classifier is not None:
        old_aux = model.aux_classifier[-1]
        model.aux_classifier[-1] = nn.Conv2d(old_aux.in_channels, num_classes, 1)
    return model


def _deeplabv3(backbone: ResNet, *, num_classes: int, aux_loss: bool, atrous_rates: Sequence[int],
               channels: int) -> DeepLabV3:
    classifier = DeepLabHead(backbone.out_channels, num_classes, atrous_rates, channels)
    aux = FCNHead(backbone.aux_channels, num_classes) if aux_loss else None
    return DeepLabV3(backbone, classifier, aux)


@register_model("deeplabv3_resnet50", family="deeplabv3",
                description="DeepLabV3, ResNet-50 output stride 8, ASPP 12/24/36 (torchvision-compatible)",
                mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(512, 1024), label_set="cityscapes19",
                num_classes=19)
def deeplabv3_resnet50(*, num_classes: int = 19, aux_loss: bool = False,
                       atrous_rates: Sequence[int] = (12, 24, 36)) -> DeepLabV3:
    """DeepLabV3-ResNet-50; ``atrous_rates=(6, 12, 18)`` is the paper's output-stride-16 setting."""
    backbone = ResNet(layers=(3, 4, 6, 3), width=64, replace_stride_with_dilation=(False, True, True))
    return _deeplabv3(backbone, num_classes=num_classes, aux_loss=aux_loss, atrous_rates=atrous_rates,
                      channels=256)


@register_model("deeplabv3_small", family="deeplabv3",
                description="DeepLabV3 small preset: ResNet width 16, one block per stage, ASPP 64ch 6/12/18",
                mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(128, 256), label_set="cityscapes19",
                num_classes=19)
def deeplabv3_small(*, num_classes: int = 19, aux_loss: bool = False,
                    atrous_rates: Sequence[int] = (6, 12, 18), width: int = 16, channels: int = 64) -> DeepLabV3:
    """Same classes as the full model, narrow and shallow so it trains on 2 CPU cores in minutes."""
    backbone = ResNet(layers=(1, 1, 1, 1), width=width, replace_stride_with_dilation=(False, True, True))
    return _deeplabv3(backbone, num_classes=num_classes, aux_loss=aux_loss, atrous_rates=atrous_rates,
                      channels=channels)
