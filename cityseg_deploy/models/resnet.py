"""ResNet backbone (He et al., 2016) with dilation, as DeepLabV3 uses it.

Parameter names follow torchvision's ``resnet50`` (``conv1``, ``bn1``, ``layer1``..``layer4`` of
``Bottleneck`` blocks with ``downsample.0/1``), so ImageNet and ``deeplabv3_resnet50`` weights load
by name.  Like torchvision's ``IntermediateLayerGetter`` over a ResNet, the backbone holds only the
stem and the four stages (no ``avgpool``/``fc``) and returns ``{"aux": layer3, "out": layer4}``.

``replace_stride_with_dilation`` trades a stage's stride for dilation: DeepLabV3 keeps the
receptive field of the classification network while the feature map stays at 1/8 of the input
(output stride 8), which is what dense prediction needs.  ``width`` and ``layers`` make the same
classes serve the small CPU presets.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


class Bottleneck(nn.Module):
    """1x1 reduce → 3x3 (strided or dilated) → 1x1 expand (×4), plus the identity/projection path."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, *, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet(nn.Module):
    """ResNet stem + four Bottleneck stages, returning the layer3 and layer4 feature maps.

    ``width`` is the stem's channel count and the first stage's bottleneck width (64 for
    ResNet-50); stage ``i`` has ``width * 2**i`` bottleneck channels and ×4 that at its output.
    """

    def __init__(self, *, layers: Sequence[int] = (3, 4, 6, 3), width: int = 64,
                 replace_stride_with_dilation: Sequence[bool] = (False, False, False)) -> None:
        super().__init__()
        if len(layers) != 4 or len(replace_stride_with_dilation) != 3:
            raise ValueError("ResNet needs 4 stage depths and 3 dilation flags")
        self.inplanes = width
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_stage(width, layers[0])
        self.layer2 = self._make_stage(width * 2, layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_stage(width * 4, layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_stage(width * 8, layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.out_channels = width * 8 * Bottleneck.expansion
        self.aux_channels = width * 4 * Bottleneck.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_stage(self, planes: int, blocks: int, *, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        # As torchvision: a dilated stage's first block keeps the previous dilation, the rest
        # use the new one, so the sampling grid stays continuous across the stage boundary.
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        blocks_ = [Bottleneck(self.inplanes, planes, stride=stride, dilation=previous_dilation,
                              downsample=downsample)]
        self.inplanes = planes * Bottleneck.expansion
        blocks_ += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*blocks_)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        aux = self.layer3(x)
        return {"aux": aux, "out": self.layer4(aux)}


def resnet50(*, replace_stride_with_dilation: Sequence[bool] = (False, True, True)) -> ResNet:
    """ResNet-50 at output stride 8 (DeepLabV3's setting)."""
    return ResNet(layers=(3, 4, 6, 3), width=64, replace_stride_with_dilation=replace_stride_with_dilation)
