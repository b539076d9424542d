"""DenseNet backbone (Huang et al., 2017) at output stride 8, as DenseASPP (Yang et al., 2018) uses it.

Every layer of a dense block sees the concatenation of all earlier feature maps and adds
``growth_rate`` new ones (BN-ReLU-1x1 bottleneck, BN-ReLU-3x3).  DenseASPP keeps the feature map
at 1/8 of the input: only ``transition1`` pools; blocks 3 and 4 use dilation 2 and 4 instead of
downsampling, and a fourth transition (no pooling) after block 4 halves the channels before
``norm5`` (2208 → 1104 for DenseNet-161).

Module names follow torchvision's modern DenseNet (``features.conv0``, ``norm0``, ``relu0``,
``pool0``, ``denseblockN.denselayerM.{norm1,relu1,conv1,norm2,relu2,conv2}``,
``transitionN.{norm,relu,conv,pool}``, ``norm5``).  The released DenseASPP weights and old
torchvision DenseNets spell the layer parts ``norm.1``/``conv.2``; :mod:`.convert` renames them.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (``bn_size * growth`` channels) → BN-ReLU-3x3 conv (``growth`` channels)."""

    def __init__(self, in_channels: int, *, growth_rate: int, bn_size: int, dilation: int = 1,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        mid = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, growth_rate, 3, padding=dilation, dilation=dilation, bias=False)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Returns only the new features; the block concatenates.  relu1 must not be in-place on
        # the block's concatenated input, which other layers reuse: BN makes a new tensor first.
        y = self.conv1(self.relu1(self.norm1(x)))
        y = self.conv2(self.relu2(self.norm2(y)))
        return self.drop(y)


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; output = cat(input, new_1, ..., new_n) along channels.

    ``concat_in_place`` (set on inference copies by :func:`..fuse.optimise_for_inference`) writes
    each layer's new channels into one buffer of the block's final width, and layer k reads the
    first ``c_k`` channels of it — what ``torch.cat`` would rebuild for every layer, at a cost
    that grows with the square of the depth (DenseASPP-161: 78 concatenations of up to 2112
    channels).  Off by default and whenever autograd records (the buffer is written after earlier
    layers read it) or a tracer exports the graph (ONNX/TensorRT want the plain ``Concat``).
    """

    def __init__(self, num_layers: int, in_channels: int, *, growth_rate: int, bn_size: int,
                 dilation: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.concat_in_place = False
        for i in range(num_layers):
            self[f"denselayer{i + 1}"] = DenseLayer(in_channels + i * growth_rate, growth_rate=growth_rate,
                                                    bn_size=bn_size, dilation=dilation, drop_rate=drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.concat_in_place and not torch.is_grad_enabled() and not _tracing():
            return self._forward_in_place(x)
        features = [x]
        for layer in self.values():
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)

    def _forward_in_place(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self.values())
        width = x.shape[1] + sum(layer.conv2.out_channels for layer in layers)
        layout = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                  and not x.is_contiguous() else torch.contiguous_format)
        out = torch.empty((x.shape[0], width, *x.shape[2:]), dtype=x.dtype, device=x.device,
                          memory_format=layout)
        filled = x.shape[1]
        out[:, :filled].copy_(x)
        for layer in layers:
            new = layer(out[:, :filled])
            out[:, filled:filled + new.shape[1]].copy_(new)
            filled += new.shape[1]
        return out


def _tracing() -> bool:
    return (torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export())


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv halving the channels, then 2x2 average pooling only where it downsamples."""

    def __init__(self, in_channels: int, out_channels: int, *, pool: bool) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(in_channels))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, 1, bias=False))
        if pool:
            self.add_module("pool", nn.AvgPool2d(2, stride=2))


class DenseNetOS8(nn.Module):
    """DenseNet feature extractor at output stride 8; ``self.features`` holds every module.

    ``out_channels`` is the width after ``transition4``/``norm5``.  The network ends with
    ``norm5`` (no ReLU): the first DenseASPP block starts with a ReLU.
    """

    def __init__(self, *, growth_rate: int = 48, num_init_features: int = 96,
                 block_config: Sequence[int] = (6, 12, 36, 24), bn_size: int = 4,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, num_init_features, 7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(3, stride=2, padding=1)),
        ]))
        channels = num_init_features
        dilations = (1, 1, 2, 4)
        for i, (num_layers, dilation) in enumerate(zip(block_config, dilations), start=1):
            self.features.add_module(f"denseblock{i}", DenseBlock(
                num_layers, channels, growth_rate=growth_rate, bn_size=bn_size, dilation=dilation,
                drop_rate=drop_rate))
            channels += num_layers * growth_rate
            self.features.add_module(f"transition{i}", Transition(channels, channels // 2, pool=(i == 1)))
            channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def densenet161_os8() -> DenseNetOS8:
    """DenseNet-161 (growth 48, init 96, blocks 6-12-36-24): 1104 output channels."""
    return DenseNetOS8(growth_rate=48, num_init_features=96, block_config=(6, 12, 36, 24), bn_size=4)


def densenet121_os8() -> DenseNetOS8:
    """DenseNet-121 (growth 32, init 64, blocks 6-12-24-16): 512 output channels."""
    return DenseNetOS8(growth_rate=32, num_init_features=64, block_config=(6, 12, 24, 16), bn_size=4)
