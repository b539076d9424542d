"""cityseg-deploy: train, export, run, check and benchmark Cityscapes segmentation networks."""
from __future__ import annotations

from . import native_logs  # noqa: F401 - silences OpenCV/FFmpeg before anything imports cv2

__version__ = "0.1.0"


def load_model(path):
    """Load a checkpoint ``.pt`` as an ``nn.Module`` in eval mode.

    Its forward takes a normalised float NCHW tensor and returns NCHW logits at the input size.
    The metadata (classes, palette, mean/std, size) is on ``model.cityseg_meta``.
    """
    from .models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(path)
    model.cityseg_meta = meta
    return model.eval()
