"""Fold eval-mode BatchNorm into the convolution that feeds it, for inference copies of a model.

In eval mode a BatchNorm after a convolution is a per-channel affine map, so it can live in the
conv's weights: ``w' = w * s``, ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``
per output channel.  The BN becomes ``nn.Identity`` and its kernel launch (and its pass over the
activation) disappears.  The arithmetic is torch's own
:func:`torch.nn.utils.fusion.fuse_conv_bn_weights`.

Which BNs fold is decided on the traced graph (:func:`torch.fx.symbolic_trace`), not by module
names: a BN folds only where its input is the output of a ``Conv1d/2d/3d`` (or a ``groups=1``
``ConvTranspose``) that nothing else reads, and each of the two modules runs exactly once per
forward.  The module tree is then edited in place of the graph (the model keeps its class and its
own ``forward``).  Pre-activation BNs — DenseNet's ``norm1`` after a concatenation, its
transitions' ``norm`` — have no conv right before them and stay.  A model that does not trace
falls back to adjacent ``[Conv, BN]`` pairs inside plain ``nn.Sequential`` containers.

Only for inference: the folded model has different parameters (a checkpoint saved from it would
no longer load into the original architecture with BN).
"""
from __future__ import annotations

import copy
import logging
from collections import Counter

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

log = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(bn, _BN) or not (bn.track_running_stats and bn.running_mean is not None
                                       and bn.running_var is not None):
        return False  # without running statistics an eval BN normalises by the batch's own
    if isinstance(conv, _CONV_T):
        # the per-channel scale sits on weight dim 1 only without groups
        return conv.groups == 1 and conv.out_channels == bn.num_features
    return isinstance(conv, _CONV) and conv.out_channels == bn.num_features


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, bn name) for every conv whose only reader is a BN, on the traced graph."""
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    calls = Counter(id(modules[n.target]) for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv, bn = modules[src.target], modules[node.target]
        if calls[id(conv)] == 1 and calls[id(bn)] == 1 and _foldable(conv, bn):
            pairs.append((src.target, node.target))
    return pairs


def _pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    """Fallback: ``[Conv, BN]`` neighbours in a plain ``nn.Sequential`` (its forward is the chain)."""
    pairs = []
    for name, seq in model.named_modules():
        if type(seq) is not nn.Sequential:  # a subclass may override forward
            continue
        children = list(seq.named_children())
        for (a, conv), (b, bn) in zip(children, children[1:]):
            if _foldable(conv, bn):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a, prefix + b))
    return pairs


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Qualified names of the (conv, BN) pairs :func:`fold_batchnorm` would fold."""
    try:
        return _pairs_fx(model)
    except Exception as exc:  # data-dependent control flow etc.: fall back to the safe subset
        log.debug("fold_batchnorm: %s does not trace (%s); folding Sequential [Conv, BN] only",
                  type(model).__name__, exc)
        return _pairs_sequential(model)


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> tuple[nn.Module, int]:
    """Fold every BN that directly follows a conv into that conv; return (model, number folded).

    Works on a deep copy unless ``inplace``; the result is in eval mode.  Outputs equal the
    original's up to float rounding.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    pairs = find_conv_bn_pairs(model)
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
            conv.weight, conv.bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias,
                transpose=isinstance(conv, _CONV_T))
            parent, _, child = bn_name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return model, len(pairs)


def count_batchnorm(model: nn.Module) -> int:
    return sum(isinstance(m, _BN) for m in model.modules())


class BatchNormAffine(nn.Module):
    """An eval-mode BatchNorm as the per-channel affine map it is: ``x * scale + shift``.

    Why: cuDNN's NHWC BatchNorm inference kernel is memory-bound yet ran 7x below the copy
    bandwidth on an H100 (bench/results/gpu_denseaspp_profile.txt: 66 % of DenseASPP-161's fp16
    time); one ``addcmul`` over the same tensor is a plain vectorised elementwise kernel.  It
    returns a new tensor (a following in-place ReLU must not write into a shared input).
    """

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
            1.0 / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias.detach() if bn.affine else 0.0) - bn.running_mean * scale
        shape = (1, -1) + (1,) * _SPATIAL_DIMS[type(bn)]
        self.register_buffer("scale", scale.reshape(shape).clone())
        self.register_buffer("shift", shift.reshape(shape).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x, self.scale)


_SPATIAL_DIMS = {nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}  # BatchNorm1d takes (N,C) and (N,C,L): left alone


def affine_batchnorm(model: nn.Module) -> int:
    """Replace every eval BatchNorm with running statistics by :class:`BatchNormAffine`, in place
    (run :func:`fold_batchnorm` first: the BNs left are those no conv feeds); return the count."""
    replaced = 0
    for name, module in list(model.named_modules()):
        if type(module) in _SPATIAL_DIMS and module.track_running_stats and module.running_mean is not None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, BatchNormAffine(module))
            replaced += 1
    return replaced


def optimise_for_inference(model: nn.Module, *, bn_affine: bool = True,
                           concat_in_place: bool = True) -> dict[str, int]:
    """The eager inference rewrites beyond BN folding, in place on an inference copy: pre-activation
    BNs as affine maps, DenseNet blocks concatenating into one buffer.  Returns what changed."""
    done = {"bn_affine": affine_batchnorm(model) if bn_affine else 0, "concat_in_place": 0}
    for module in model.modules():
        if concat_in_place and hasattr(module, "concat_in_place"):
            module.concat_in_place = True
            done["concat_in_place"] += 1
    return done
