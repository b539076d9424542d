"""Published weights → the project's checkpoint: one filter function per source, as timm does.

Sources (each filter takes a raw state dict and returns one whose names are ours):

* torchvision ``deeplabv3_resnet50`` (COCO with VOC labels, 21 classes, aux head): names are
  already ours (:func:`filter_torchvision_deeplabv3`).
* milesial Pytorch-UNet checkpoints: names are ours; they carry a ``mask_values`` entry that is
  not a weight (:func:`filter_milesial_unet`).
* The released ``denseASPP161.pkl`` (PyTorch 0.3.1): ``module.`` prefixes and dotted layer names
  (``norm.1``, ``conv.2``) that modern PyTorch refuses as module names, and no
  ``num_batches_tracked`` buffers (:func:`filter_denseaspp_original`).
* ImageNet backbones: torchvision ResNet-50 (→ ``backbone.*``, ``fc`` dropped) and DenseNet-121/161
  (old-style ``norm.1`` names too; ``classifier`` and ``norm5`` dropped, since DenseASPP's
  ``norm5`` normalises the output of its extra fourth transition, half as wide)
  (:func:`filter_imagenet_resnet`, :func:`filter_imagenet_densenet`).  The heads stay freshly
  initialised: these are starting points for training.

:func:`convert_weights` picks the filter from the architecture and the keys, takes the class
count from the file, checks that every tensor fits (naming missing, unexpected and mis-shaped
keys when not) and writes a checkpoint with its label set.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CitysegError
from .checkpoint import FORMAT_NAME, ModelMeta, file_sha256, save_checkpoint
from .registry import build_model, get_entry
from .safe_load import load_weights_file

StateDict = dict[str, torch.Tensor]

# PyTorch < 0.4 DenseNets named layer parts "norm.1", "relu.1", "conv.2"; ours drop the dot.
_DOTTED_PART = re.compile(r"(?<=\.)(norm|relu|conv)\.(\d+)(?=\.)")

# The label names of torchvision's COCO-trained segmentation weights (the 20 VOC classes + background).
VOC_CLASSES = ("__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def read_source(path: str | os.PathLike, *, trust_pickle: bool = False) -> StateDict:
    """The state dict inside a foreign weights file.

    Accepts a plain state dict (``.pth``/``.pkl``, legacy PyTorch 0.3 files included), a dict
    holding it under ``state_dict`` or ``model``, or — only with ``trust_pickle`` — a whole pickled
    ``nn.Module``.  The file is read by :func:`~.safe_load.load_weights_file`, which runs no code
    from it; ``trust_pickle`` allows full unpickling for a file the restricted reader refuses.
    """
    path = Path(path)
    obj = load_weights_file(path, trust_pickle=trust_pickle)
    if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
        raise CitysegError(f"{path}: already a cityseg checkpoint; use it as it is")
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], (dict, nn.Module)):
            obj = obj[key]
            break
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CitysegError(f"{path}: holds no state dict of tensors (found {type(obj).__name__})")
    return dict(obj)


def strip_prefix(state_dict: StateDict, prefix: str = "module.") -> StateDict:
    """Drop a DataParallel/DDP ``module.`` (or other) prefix where every tensor key has it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def rename_dotted(key: str) -> str:
    """``features.denseblock1.denselayer1.norm.1.weight`` → ``...denselayer1.norm1.weight``."""
    return _DOTTED_PART.sub(r"\1\2", key)


# --------------------------------------------------------------------------------------------
# one filter per source
# --------------------------------------------------------------------------------------------
def filter_torchvision_deeplabv3(state_dict: StateDict) -> StateDict:
    """torchvision ``deeplabv3_resnet50``: our names already; only a wrapper prefix may go."""
    return strip_prefix(state_dict)


def filter_milesial_unet(state_dict: StateDict) -> StateDict:
    """milesial Pytorch-UNet: drop ``mask_values`` (the label values it trained on, not a weight)."""
    return {k: v for k, v in strip_prefix(state_dict).items() if k != "mask_values"}


def filter_denseaspp_original(state_dict: StateDict) -> StateDict:
    """The DenseASPP release: strip ``module.``, ``norm.1`` → ``norm1`` etc.

    Its missing ``num_batches_tracked`` buffers are filled by :func:`fit_state_dict`.
    """
    return {rename_dotted(k): v for k, v in strip_prefix(state_dict).items()}


def filter_imagenet_resnet(state_dict: StateDict) -> StateDict:
    """torchvision ImageNet ResNet → ``backbone.*`` of DeepLabV3 (the ``fc`` classifier dropped)."""
    sd = strip_prefix(state_dict)
    return {f"backbone.{k}": v for k, v in sd.items() if not k.startswith("fc.")}


def filter_imagenet_densenet(state_dict: StateDict) -> StateDict:
    """torchvision ImageNet DenseNet (old or new names) → DenseASPP's ``features.*``.

    ``classifier`` goes, and so does ``norm5``: ImageNet's normalises the last dense block's
    output, ours the output of the extra fourth transition (half as many channels).
    """
    sd = {rename_dotted(k): v for k, v in strip_prefix(state_dict).items()}
    return {k: v for k, v in sd.items()
            if k.startswith("features.") and not k.startswith("features.norm5.")}


# --------------------------------------------------------------------------------------------
# fitting a filtered state dict to a model
# --------------------------------------------------------------------------------------------
def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "") if keys else "none"


def fit_state_dict(model: nn.Module, state_dict: StateDict, *, what: str, partial_prefixes: tuple[str, ...] = ()
                   ) -> StateDict:
    """Check ``state_dict`` against ``model`` and return it completed; raise naming what does not fit.

    Missing ``num_batches_tracked`` buffers (files from PyTorch < 0.4.1) are filled with 0.
    With ``partial_prefixes`` (backbone-only sources) the model's keys outside those prefixes
    keep their initial values; every key of the file must still be used.
    """
    own = model.state_dict()
    sd = dict(state_dict)
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros_like(value)
    # Model order for missing/mismatched, file order for unexpected: the first names shown are
    # the network's first layers, where a wrong --arch or width shows at once.
    unexpected = [k for k in sd if k not in own]
    missing = [k for k in own if k not in sd]
    if partial_prefixes:
        for key in missing:
            if not key.startswith(partial_prefixes) or key.endswith("num_batches_tracked"):
                sd[key] = own[key]
        missing = [k for k in missing if k not in sd]
    mismatched = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
                  for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        raise CitysegError(
            f"{what}: missing keys: {_short(missing)}; unexpected keys: {_short(unexpected)}; "
            f"shape mismatches (file vs model): {_short(mismatched, 4)}; "
            f"check that --arch matches the file")
    return {k: sd[k] for k in own}


def _num_classes(sd: StateDict, key: str, what: str) -> int:
    if key not in sd:
        raise CitysegError(f"{what}: no classifier weight {key!r} (keys in the file: "
                           f"{_short(list(sd))}); check that --arch matches the file")
    return int(sd[key].shape[0])


def _plan(arch: str, sd: StateDict, what: str) -> tuple[StateDict, dict[str, Any], tuple[str, ...], str]:
    """(filtered state dict, builder kwargs, prefixes a partial source fills, source kind)."""
    family = get_entry(arch).family
    if family == "deeplabv3":
        if any(k.startswith(("backbone.", "module.backbone.")) for k in sd):
            out = filter_torchvision_deeplabv3(sd)
            args = {"num_classes": _num_classes(out, "classifier.4.weight", what),
                    "aux_loss": any(k.startswith("aux_classifier.") for k in out)}
            return out, args, (), "torchvision-deeplabv3"
        if any(k.endswith("layer1.0.conv1.weight") for k in sd):
            return filter_imagenet_resnet(sd), {}, ("backbone.",), "imagenet-resnet"
    elif family == "unet":
        out = filter_milesial_unet(sd)
        if "inc.double_conv.0.weight" in out:
            first = out["inc.double_conv.0.weight"]
            args = {"num_classes": _num_classes(out, "outc.conv.weight", what),
                    "n_channels": int(first.shape[1]), "bilinear": "up1.up.weight" not in out}
            if int(first.shape[0]) != 64 or arch != "unet":
                args["base_width"] = int(first.shape[0])
            return out, args, (), "milesial-unet"
    elif family == "denseaspp":
        out = filter_denseaspp_original(sd)
        if "classification.1.weight" in out:
            return out, {"num_classes": _num_classes(out, "classification.1.weight", what)}, (), "denseaspp-release"
        if "features.conv0.weight" in out:
            # ImageNet has no transition4 and a wider norm5: those keep their initial values.
            required = ("features.conv0.", "features.norm0.", "features.denseblock",
                        "features.transition1.", "features.transition2.", "features.transition3.")
            return filter_imagenet_densenet(sd), {}, required, "imagenet-densenet"
    raise CitysegError(f"{what}: keys do not look like weights for {arch!r} ({family}); first keys: "
                       f"{_short(list(sd), 4)}")


# --------------------------------------------------------------------------------------------
# label sets for foreign class counts
# --------------------------------------------------------------------------------------------
def voc_palette(n: int) -> list[list[int]]:
    """The PASCAL VOC colour map (bit-interleaved class index), distinct colours for any ``n``."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


def label_set_meta(num_classes: int, *, family: str) -> tuple[str, list[str], list[list[int]]]:
    """(label set name, class names, palette) for a class count found in a file."""
    from ..labels import label_set_for

    labels = label_set_for(num_classes)
    if labels is not None:
        return labels.name, list(labels.class_names), [list(c) for c in labels.palette]
    if num_classes == len(VOC_CLASSES) and family == "deeplabv3":
        return "coco21", list(VOC_CLASSES), voc_palette(num_classes)
    return f"custom{num_classes}", [f"class_{i}" for i in range(num_classes)], voc_palette(num_classes)


# --------------------------------------------------------------------------------------------
# the conversion
# --------------------------------------------------------------------------------------------
def convert_weights(src: str | os.PathLike, arch: str, out: str | os.PathLike, *,
                    trust_pickle: bool = False) -> Path:
    """Convert the foreign weights file ``src`` for ``arch`` into a cityseg checkpoint at ``out``.

    The class count comes from the file (a backbone-only file gets the architecture's default
    head); label set ``cityscapes19``/``cityscapes10`` for 19/10 classes, ``coco21`` for
    torchvision's 21-class DeepLabV3, otherwise ``custom{N}`` with generic names.  ``src`` is read
    without running code from it unless ``trust_pickle`` (see :func:`read_source`).
    """
    src, out = Path(src), Path(out)
    entry = get_entry(arch)
    what = f"{src} as {arch}"
    raw = read_source(src, trust_pickle=trust_pickle)
    sd, args, partial, kind = _plan(arch, raw, what)
    model = build_model(arch, **args)
    model.load_state_dict(fit_state_dict(model, sd, what=what, partial_prefixes=partial), strict=True)
    num_classes = int(args.get("num_classes", entry.default_cfg["num_classes"]))
    label_set, names, palette = label_set_meta(num_classes, family=entry.family)
    cfg = entry.default_cfg
    meta = ModelMeta(arch=arch, arch_args={"num_classes": num_classes, **args}, label_set=label_set,
                     class_names=names, palette=palette, mean=list(cfg["mean"]), std=list(cfg["std"]),
                     input_size=list(cfg["input_size"]),
                     extra={"source": src.name, "source_sha256": file_sha256(src), "source_kind": kind,
                            "backbone_only": bool(partial)})
    save_checkpoint(out, model.eval(), meta)
    return out
