"""Data room: the Cityscapes reader, the synthetic street-scene generator, and augmentations."""
from __future__ import annotations

from .cityscapes import CityscapesDataset, Sample, find_samples
from .check import check_dataset
from .synth import render_frame, scene_params, synth_scene, synthesize
from .transforms import TrainAugment, label_to_tensor, to_tensor

__all__ = ["CityscapesDataset", "Sample", "TrainAugment", "check_dataset", "find_samples",
           "label_to_tensor", "render_frame", "scene_params", "synth_scene", "synthesize",
           "to_tensor"]
