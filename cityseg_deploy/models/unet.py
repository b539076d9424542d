"""U-Net (Ronneberger et al., 2015), in the layout of milesial/Pytorch-UNet (v3+).

A contracting path of double 3x3 convs and 2x2 max pools, an expanding path that upsamples
(transposed conv by default, bilinear optional), pads to the skip connection's size and
concatenates ``[skip, up]``, then a 1x1 conv to the classes.  Padded 3x3 convs and pad-to-skip
make any input size come out at the input size.

Names match milesial's (``inc.double_conv.*``, ``down1.maxpool_conv.1.double_conv.*``,
``up1.up.*``, ``up1.conv.double_conv.*``, ``outc.conv.*``) so its checkpoints load after dropping
their ``mask_values`` entry.  milesial feeds RGB/255 without mean/std, so the registry's mean is 0
and std 1.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class DoubleConv(nn.Module):
    """(3x3 conv, no bias → BN → ReLU) × 2; ``mid_channels`` is the first conv's output."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """2x2 max pool, then :class:`DoubleConv`: half the size, new channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upsample ×2, pad to the skip's size, ``cat([skip, up])``, :class:`DoubleConv`.

    Transposed conv (learned, halves the channels) by default; with ``bilinear`` the channels are
    kept and the DoubleConv narrows through ``in_channels // 2``.
    """

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = False) -> None:
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy = skip.shape[-2] - x.shape[-2]
        dx = skip.shape[-1] - x.shape[-1]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
    """1x1 conv to the class logits."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """Four :class:`Down` and four :class:`Up` stages; widths ``base``·(1, 2, 4, 8, 16)."""

    def __init__(self, n_channels: int = 3, n_classes: int = 2, bilinear: bool = False, base_width: int = 64) -> None:
        super().__init__()
        self.n_channels = n_channels
        self.n_classes = n_classes
        self.bilinear = bilinear
        b = base_width
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(n_channels, b)
        self.down1 = Down(b, 2 * b)
        self.down2 = Down(2 * b, 4 * b)
        self.down3 = Down(4 * b, 8 * b)
        self.down4 = Down(8 * b, 16 * b // factor)
        self.up1 = Up(16 * b, 8 * b // factor, bilinear)
        self.up2 = Up(8 * b, 4 * b // factor, bilinear)
        self.up3 = Up(4 * b, 2 * b // factor, bilinear)
        self.up4 = Up(2 * b, b, bilinear)
        self.outc = OutConv(b, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


_UNET_CFG = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), label_set="cityscapes10", num_classes=10)


@register_model("unet", family="unet", description="U-Net (milesial layout), 64-1024 channels, transposed-conv up",
                input_size=(512, 1024), **_UNET_CFG)
def unet(*, num_classes: int = 10, n_channels: int = 3, bilinear: bool = False, base_width: int = 64) -> UNet:
    """The report's U-Net: milesial's network predicting the 10 merged Cityscapes classes."""
    return UNet(n_channels=n_channels, n_classes=num_classes, bilinear=bilinear, base_width=base_width)


@register_model("unet_small", family="unet", description="U-Net small preset: 16-256 channels",
                input_size=(128, 256), **_UNET_CFG)
def unet_small(*, num_classes: int = 10, n_channels: int = 3, bilinear: bool = False, base_width: int = 16) -> UNet:
    """Same classes as :func:`unet`, a quarter of the width, for CPU training in minutes."""
    return UNet(n_channels=n_channels, n_classes=num_classes, bilinear=bilinear, base_width=base_width)
