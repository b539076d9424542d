"""The three networks of the report (DeepLabV3, U-Net, DenseASPP), their registry and checkpoints.

``build_model(arch, **kwargs)`` builds any registered architecture; ``save_checkpoint`` /
``load_checkpoint`` write and read the project's checkpoint format; :mod:`.convert` turns
published weights (torchvision, milesial, the DenseASPP release, ImageNet backbones) into it.
"""
from __future__ import annotations

from .checkpoint import ModelMeta, load_checkpoint, read_checkpoint, read_meta, save_checkpoint
from .registry import build_model, get_default_cfg, get_entry, list_models, register_model

__all__ = [
    "ModelMeta", "build_model", "get_default_cfg", "get_entry", "list_models", "load_checkpoint",
    "read_checkpoint", "read_meta", "register_model", "save_checkpoint",
]
