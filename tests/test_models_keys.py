"""Parameter names, shapes and counts of the three networks, checked against the published layouts.

The expected key lists are *generated from the architecture descriptions* (torchvision's
DeepLabV3-ResNet-50, milesial's U-Net, the DenseASPP release), not copied from any code, so a
renamed or mis-sized layer shows up as a precise difference.  Building the full networks is
cheap; no full-size forward pass runs here.
"""
from __future__ import annotations

import pytest
import torch

from cityseg_deploy.models import build_model
from cityseg_deploy.models.convert import rename_dotted

Shapes = dict[str, tuple[int, ...]]


def _bn(prefix: str, c: int, *, tracked: bool = True) -> Shapes:
    keys = {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,)}
    if tracked:
        keys[f"{prefix}.num_batches_tracked"] = ()
    return keys


def _conv(prefix: str, cout: int, cin: int, k: int, *, bias: bool = False) -> Shapes:
    keys = {f"{prefix}.weight": (cout, cin, k, k)}
    if bias:
        keys[f"{prefix}.bias"] = (cout,)
    return keys


# ---------------------------------------------------------------- torchvision deeplabv3_resnet50
def resnet_keys(prefix: str, layers=(3, 4, 6, 3), width: int = 64) -> Shapes:
    """ResNet with Bottleneck blocks (expansion 4): stem, then per stage ``width * 2**i`` planes."""
    keys = {**_conv(f"{prefix}conv1", width, 3, 7), **_bn(f"{prefix}bn1", width)}
    inplanes = width
    for stage, blocks in enumerate(layers):
        planes = width * 2 ** stage
        for b in range(blocks):
            p = f"{prefix}layer{stage + 1}.{b}."
            keys |= _conv(p + "conv1", planes, inplanes, 1) | _bn(p + "bn1", planes)
            keys |= _conv(p + "conv2", planes, planes, 3) | _bn(p + "bn2", planes)
            keys |= _conv(p + "conv3", 4 * planes, planes, 1) | _bn(p + "bn3", 4 * planes)
            if b == 0:  # stride or width changes: projection shortcut
                keys |= _conv(p + "downsample.0", 4 * planes, inplanes, 1) | _bn(p + "downsample.1", 4 * planes)
            inplanes = 4 * planes
    return keys


def deeplabv3_keys(num_classes: int, *, aux: bool, width: int = 64, layers=(3, 4, 6, 3), ch: int = 256,
                   n_rates: int = 3) -> Shapes:
    """torchvision: classifier = [ASPP, 3x3 conv, BN, ReLU, 1x1]; ASPP.convs = [1x1, rates..., pooling]."""
    cin = width * 8 * 4
    keys = resnet_keys("backbone.", layers, width)
    keys |= _conv("classifier.0.convs.0.0", ch, cin, 1) | _bn("classifier.0.convs.0.1", ch)
    for i in range(1, n_rates + 1):
        keys |= _conv(f"classifier.0.convs.{i}.0", ch, cin, 3) | _bn(f"classifier.0.convs.{i}.1", ch)
    pool = n_rates + 1
    keys |= _conv(f"classifier.0.convs.{pool}.1", ch, cin, 1) | _bn(f"classifier.0.convs.{pool}.2", ch)
    keys |= _conv("classifier.0.project.0", ch, (n_rates + 2) * ch, 1) | _bn("classifier.0.project.1", ch)
    keys |= _conv("classifier.1", ch, ch, 3) | _bn("classifier.2", ch)
    keys |= _conv("classifier.4", num_classes, ch, 1, bias=True)
    if aux:
        a = width * 4 * 4
        keys |= _conv("aux_classifier.0", a // 4, a, 3) | _bn("aux_classifier.1", a // 4)
        keys |= _conv("aux_classifier.4", num_classes, a // 4, 1, bias=True)
    return keys


# ---------------------------------------------------------------- milesial U-Net
def _double_conv(prefix: str, cin: int, cout: int, mid: int | None = None) -> Shapes:
    mid = mid or cout
    return (_conv(f"{prefix}.double_conv.0", mid, cin, 3) | _bn(f"{prefix}.double_conv.1", mid)
            | _conv(f"{prefix}.double_conv.3", cout, mid, 3) | _bn(f"{prefix}.double_conv.4", cout))


def unet_keys(n_classes: int, *, bilinear: bool = False, b: int = 64, n_channels: int = 3) -> Shapes:
    f = 2 if bilinear else 1
    keys = _double_conv("inc", n_channels, b)
    widths = [b, 2 * b, 4 * b, 8 * b, 16 * b // f]
    for i in range(4):
        keys |= _double_conv(f"down{i + 1}.maxpool_conv.1", widths[i], widths[i + 1])
    ins = [16 * b, 8 * b, 4 * b, 2 * b]
    outs = [8 * b // f, 4 * b // f, 2 * b // f, b]
    for i, (cin, cout) in enumerate(zip(ins, outs), start=1):
        if bilinear:
            keys |= _double_conv(f"up{i}.conv", cin, cout, cin // 2)
        else:  # ConvTranspose2d weight is (in, out, k, k)
            keys |= {f"up{i}.up.weight": (cin, cin // 2, 2, 2), f"up{i}.up.bias": (cin // 2,)}
            keys |= _double_conv(f"up{i}.conv", cin, cout)
    keys |= _conv("outc.conv", n_classes, b, 1, bias=True)
    return keys


# ---------------------------------------------------------------- DenseASPP release
def denseaspp_release_keys(num_classes: int = 19, *, growth: int = 48, init: int = 96,
                           blocks=(6, 12, 36, 24), bn_size: int = 4, d0: int = 512, d1: int = 128) -> Shapes:
    """Keys as the release names them (PyTorch 0.3: dotted ``norm.1``, no num_batches_tracked)."""
    bn = lambda p, c: _bn(p, c, tracked=False)  # noqa: E731
    keys = _conv("features.conv0", init, 3, 7) | bn("features.norm0", init)
    c = init
    for i, n in enumerate(blocks, start=1):
        for j in range(n):
            p = f"features.denseblock{i}.denselayer{j + 1}."
            keys |= bn(p + "norm.1", c + j * growth) | _conv(p + "conv.1", bn_size * growth, c + j * growth, 1)
            keys |= bn(p + "norm.2", bn_size * growth) | _conv(p + "conv.2", growth, bn_size * growth, 3)
        c += n * growth
        keys |= bn(f"features.transition{i}.norm", c) | _conv(f"features.transition{i}.conv", c // 2, c, 1)
        c //= 2
    keys |= bn("features.norm5", c)
    for k, rate in enumerate((3, 6, 12, 18, 24)):
        p = f"ASPP_{rate}."
        if k:
            keys |= bn(p + "norm.1", c)
        keys |= _conv(p + "conv.1", d0, c, 1, bias=True) | bn(p + "norm.2", d0)
        keys |= _conv(p + "conv.2", d1, d0, 3, bias=True)
        c += d1
    keys |= _conv("classification.1", num_classes, c, 1, bias=True)
    return keys


def ours_from_release(keys: Shapes) -> Shapes:
    out = {rename_dotted(k): v for k, v in keys.items()}
    for k in list(out):
        if k.endswith(".running_var"):
            out[k[: -len("running_var")] + "num_batches_tracked"] = ()
    return out


def _shapes(model: torch.nn.Module) -> Shapes:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _assert_same(actual: Shapes, expected: Shapes) -> None:
    assert sorted(set(expected) - set(actual)) == [], "missing"
    assert sorted(set(actual) - set(expected)) == [], "unexpected"
    assert {k: v for k, v in actual.items() if expected[k] != v} == {}, "shapes"


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- tests
def test_deeplabv3_resnet50_matches_torchvision_layout_and_count():
    model = build_model("deeplabv3_resnet50", num_classes=21, aux_loss=True)
    _assert_same(_shapes(model), deeplabv3_keys(21, aux=True))
    assert _params(model) == 42_004_074  # torchvision's deeplabv3_resnet50 (COCO, aux)
    assert not any(k.startswith(("backbone.fc", "backbone.avgpool")) for k in model.state_dict())


def test_deeplabv3_cityscapes_head_without_aux():
    _assert_same(_shapes(build_model("deeplabv3_resnet50")), deeplabv3_keys(19, aux=False))


def test_deeplabv3_small_uses_same_layout():
    model = build_model("deeplabv3_small", aux_loss=True)
    _assert_same(_shapes(model), deeplabv3_keys(19, aux=True, width=16, layers=(1, 1, 1, 1), ch=64))


@pytest.mark.parametrize("bilinear", [False, True])
def test_unet_matches_milesial_layout(bilinear):
    model = build_model("unet", num_classes=2, bilinear=bilinear)
    _assert_same(_shapes(model), unet_keys(2, bilinear=bilinear))
    if not bilinear:
        assert _params(model) == 31_037_698  # milesial's U-Net, 2 classes, transposed conv


def test_unet_small_layout():
    _assert_same(_shapes(build_model("unet_small")), unet_keys(10, b=16))


def test_denseaspp161_matches_release_layout_and_count():
    model = build_model("denseaspp161")
    _assert_same(_shapes(model), ours_from_release(denseaspp_release_keys()))
    n = _params(model)
    assert n == 35_395_427
    assert 35.2e6 < n < 35.6e6
    assert model.state_dict()["features.norm5.weight"].shape == (1104,)
    assert model.state_dict()["classification.1.weight"].shape == (19, 1744, 1, 1)


def test_denseaspp121_matches_release_121_config():
    keys = denseaspp_release_keys(growth=32, init=64, blocks=(6, 12, 24, 16), d0=128, d1=64)
    _assert_same(_shapes(build_model("denseaspp121")), ours_from_release(keys))


def test_denseaspp_small_layout():
    keys = denseaspp_release_keys(growth=8, init=16, blocks=(2, 2, 2, 2), bn_size=2, d0=32, d1=16)
    _assert_same(_shapes(build_model("denseaspp_small")), ours_from_release(keys))


def test_rename_touches_only_dotted_layer_parts():
    assert rename_dotted("features.denseblock1.denselayer1.norm.1.weight") == \
        "features.denseblock1.denselayer1.norm1.weight"
    assert rename_dotted("ASPP_6.conv.2.bias") == "ASPP_6.conv2.bias"
    assert rename_dotted("classification.1.weight") == "classification.1.weight"
    assert rename_dotted("features.transition1.conv.weight") == "features.transition1.conv.weight"
