"""Drawing predictions: overlay (alpha blend), side-by-side, or the colour mask alone.

Works in BGR because the result goes straight to ``cv2.VideoWriter`` / ``cv2.imshow``; the
palette is converted once into a 256-entry BGR lookup and applied with ``cv2.applyColorMap``
(about 20x faster than a numpy fancy-index, and it releases the GIL, so the renderer thread does
not stall the inference thread's Python side).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..errors import CitysegError

MODES = ("overlay", "side-by-side", "mask")


def palette_bgr_lut(palette: Sequence[Sequence[int]]) -> np.ndarray:
    """256x3 uint8 lookup: class -> BGR colour; classes past the palette (and 255) -> black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:255]
    lut[: len(colours)] = colours[:, ::-1]
    return lut


class Renderer:
    """Turns (RGB frame, label map) into the BGR frame to write or show."""

    def __init__(self, palette: Sequence[Sequence[int]], *, mode: str = "overlay",
                 alpha: float = 0.5) -> None:
        if mode not in MODES:
            raise CitysegError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
        if not 0.0 <= alpha <= 1.0:
            raise CitysegError(f"--alpha {alpha}: must lie between 0 and 1")
        self.mode, self.alpha = mode, float(alpha)
        self.lut = palette_bgr_lut(palette)
        self._cv_lut = np.ascontiguousarray(self.lut.reshape(256, 1, 3))

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(H, W) of a rendered frame for an input of h x w."""
        return (h, 2 * w) if self.mode == "side-by-side" else (h, w)

    def __call__(self, image_rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
        mask = cv2.applyColorMap(np.ascontiguousarray(labels, dtype=np.uint8), self._cv_lut)
        if self.mode == "mask":
            return mask
        frame = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
        if self.mode == "side-by-side":
            return np.concatenate([frame, mask], axis=1)
        return cv2.addWeighted(frame, 1.0 - self.alpha, mask, self.alpha, 0.0)
