"""Data room: the Cityscapes reader, the synthetic street-scene generator, and augmentations."""
from __future__ import annotations

from .cityscapes import CityscapesDataset, Sample, find_samples
from .synth import render_frame, scene_params, synth_scene, synthesize

__all__ = ["CityscapesDataset", "Sample", "find_samples", "render_frame", "scene_params",
           "synth_scene", "synthesize"]
