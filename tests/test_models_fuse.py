"""Folding eval BatchNorm into the preceding conv: same logits, the BNs the architecture implies.

BN statistics are randomised first: a freshly built BN (mean 0, var 1, gamma 1, beta 0) is almost
the identity, and folding it would pass even with the formula wrong.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from cityseg_deploy.models.fuse import count_batchnorm, find_conv_bn_pairs, fold_batchnorm
from cityseg_deploy.models.registry import build_model

SIZE = (64, 128)

# arch -> (BNs folded, BNs in the model).  ResNet-50: stem 1 + 16 bottlenecks x 3 + 4 downsample
# = 53, DeepLab head 7 (ASPP 1x1, 3 atrous, pooling, project; 3x3 head conv).  deeplabv3_small:
# 1 + 4 x 3 + 4 + 7.  U-Net: 9 DoubleConvs x 2.  DenseASPP: conv0/norm0, every dense layer's
# conv1/norm2, transition4.conv/norm5 and each ASPP block's conv1/norm2 fold; the
# pre-activation BNs (dense layers' norm1 after the concatenation, transitions' norm, ASPP norm1)
# have no conv before them and stay.
EXPECTED = {
    "deeplabv3_small": (24, 24),
    "unet_small": (18, 18),
    "denseaspp_small": (1 + 8 + 1 + 5, 31),
    "deeplabv3_resnet50": (60, 60),
}


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return model.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_fold_keeps_logits_and_folds_what_the_architecture_implies(arch):
    torch.manual_seed(0)
    model = randomise_bn(build_model(arch))
    batch = 1 if arch == "deeplabv3_resnet50" else 2
    x = torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(x)
    folded, n = fold_batchnorm(model)
    with torch.inference_mode():
        out = folded(x)
    assert (n, count_batchnorm(model)) == EXPECTED[arch]
    assert count_batchnorm(folded) == EXPECTED[arch][1] - n
    assert count_batchnorm(model) == EXPECTED[arch][1]  # the original is untouched (deep copy)
    assert rel_err(out, ref) <= 1e-4, rel_err(out, ref)


def test_resnet50_backbone_folds_53():
    pairs = find_conv_bn_pairs(build_model("deeplabv3_resnet50").eval())
    backbone = [p for p in pairs if p[0].startswith("backbone.")]
    assert len(backbone) == 53
    assert ("backbone.layer1.0.downsample.0", "backbone.layer1.0.downsample.1") in backbone
    assert ("backbone.layer4.2.conv3", "backbone.layer4.2.bn3") in backbone


def test_denseaspp_leaves_pre_activation_bn():
    folded, _ = fold_batchnorm(build_model("denseaspp_small").eval())
    left = {name.rsplit(".", 1)[-1] for name, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert left == {"norm1", "norm"}  # dense/ASPP layers' norm1, transitions' norm
    assert isinstance(folded.features.norm0, nn.Identity) and isinstance(folded.features.norm5, nn.Identity)


class Shared(nn.Module):
    """conv output read by the BN *and* by the residual add: folding would change the add."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn2(self.conv2(self.bn(y) + y))


def test_conv_read_twice_is_not_folded():
    model = randomise_bn(Shared())
    x = torch.randn(1, 4, 8, 8)
    folded, n = fold_batchnorm(model)
    assert n == 1 and isinstance(folded.bn, nn.BatchNorm2d) and isinstance(folded.bn2, nn.Identity)
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) <= 1e-5


class Untraceable(nn.Module):
    """Data-dependent control flow: fx cannot trace it, the Sequential fallback still folds."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.ConvTranspose2d(8, 6, 2, stride=2), nn.BatchNorm2d(6))

    def forward(self, x):
        y = self.body(x)
        return y if y.sum() > 0 else -y


def test_untraceable_model_falls_back_to_sequential_pairs():
    model = randomise_bn(Untraceable())
    x = torch.randn(2, 3, 8, 8)
    folded, n = fold_batchnorm(model)
    assert n == 2 and count_batchnorm(folded) == 0  # the ConvTranspose2d/BN pair too
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) <= 1e-5


def test_bn_without_running_stats_is_kept():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    folded, n = fold_batchnorm(model)
    assert n == 0
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        np.testing.assert_array_equal(folded(x).numpy(), model(x).numpy())


def _randomised_bn(model):
    torch.manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_batchnorm_affine_equals_eval_batchnorm():
    from cityseg_deploy.models.fuse import BatchNormAffine

    bn = _randomised_bn(torch.nn.Sequential(torch.nn.BatchNorm2d(7)))[0]
    x = torch.randn(2, 7, 5, 6)
    with torch.no_grad():
        expected = bn(x)
        got = BatchNormAffine(bn)(x)
        got_cl = BatchNormAffine(bn)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_cl, expected, rtol=1e-5, atol=1e-6)
    assert got.data_ptr() != x.data_ptr()  # a new tensor: a following in-place ReLU is safe


@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_rewrites_keep_denseaspp_outputs(channels_last):
    """BN folded + affine pre-activation BNs + in-place concatenation = the original network."""
    from cityseg_deploy.models.fuse import count_batchnorm, fold_batchnorm, optimise_for_inference
    from cityseg_deploy.models.registry import build_model

    torch.manual_seed(0)
    model = _randomised_bn(build_model("denseaspp121", num_classes=5))
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        expected = model(x)
    fast, _ = fold_batchnorm(model)
    done = optimise_for_inference(fast)
    assert done["concat_in_place"] == 4 and done["bn_affine"] > 0 and count_batchnorm(fast) == 0
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    fast = fast.to(memory_format=fmt)
    with torch.no_grad():
        got = fast(x.to(memory_format=fmt))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_concat_in_place_only_without_autograd():
    """With autograd recording the block concatenates as written (the buffer would be modified
    after earlier layers saved views of it), and gradients flow."""
    from cityseg_deploy.models.densenet import DenseBlock

    torch.manual_seed(0)
    block = DenseBlock(3, 8, growth_rate=4, bn_size=2).eval()
    block.concat_in_place = True
    x = torch.randn(1, 8, 6, 6, requires_grad=True)
    out = block(x)
    out.sum().backward()
    assert x.grad is not None and out.shape == (1, 20, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(x), out.detach())
