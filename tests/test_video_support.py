"""Helpers for the video tests (no tests here): synthetic clips and a stand-in Segmenter.

Clips are moving scenes — ``data.synth.synth_scene`` where it exists, moving rectangles otherwise —
written with ``cv2.VideoWriter``.  The stand-in Segmenter labels each pixel from its colour, so
its output depends only on the decoded pixels: tests compare the pipeline's PNGs with ``predict``
on frames decoded independently (the encode/decode round trip is lossy).
"""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np

from cityseg_deploy.labels import CITYSCAPES19


def moving_frame(size: tuple[int, int], t: int) -> np.ndarray:
    """An RGB frame; prefers the project's synthetic street scene (moving camera)."""
    try:
        from cityseg_deploy.data.synth import synth_scene

        return synth_scene(size, seed=3, t=float(t) * 0.1)[0]
    except ImportError:
        h, w = size
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = (40, 90, 160)
        x = (4 * t) % max(1, w - 20)
        img[h // 4: h // 2, x: x + 20] = (230, 40, 40)
        img[h // 2:, :] = (110, 110, 110)
        y = (3 * t) % max(1, h // 2)
        img[y: y + 10, w - 30 - x // 2: w - 10 - x // 2] = (20, 200, 60)
        return img


def write_clip(path: Path, n: int = 40, size: tuple[int, int] = (64, 96), fps: float = 25.0,
               fourcc: str | None = None) -> Path:
    fourcc = fourcc or ("MJPG" if path.suffix == ".avi" else "mp4v")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (size[1], size[0]))
    assert writer.isOpened()
    for t in range(n):
        writer.write(cv2.cvtColor(moving_frame(size, t), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def decode_all(path: Path) -> list[np.ndarray]:
    """RGB frames of a video, decoded by cv2 directly (the reference for comparisons)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def video_info(path: Path) -> tuple[int, int, int, float]:
    """(frames actually decodable, H, W, fps)."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    fps = cap.get(cv2.CAP_PROP_FPS)
    h, w = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    cap.release()
    return len(decode_all(path)), h, w, fps


class StandInSegmenter:
    """The runtime Segmenter's interface with a colour rule instead of a network."""

    def __init__(self, delay_s: float = 0.0, raise_after: int | None = None,
                 exc: type[BaseException] = KeyboardInterrupt) -> None:
        self.meta = SimpleNamespace(label_set="cityscapes19", class_names=list(CITYSCAPES19.class_names),
                                    palette=[list(c) for c in CITYSCAPES19.palette])
        self.delay_s, self.raise_after, self.exc = delay_s, raise_after, exc
        self.calls = 0
        self.frames = 0
        self.batch_sizes: list[int] = []

    @staticmethod
    def rule(image: np.ndarray) -> np.ndarray:
        return ((image[..., 0].astype(np.uint16) + image[..., 1]) // 27 % 19).astype(np.uint8)

    def predict(self, images):
        single = isinstance(images, np.ndarray) and images.ndim == 3
        batch = [images] if single else list(images)
        if self.raise_after is not None and self.frames + len(batch) > self.raise_after:
            raise self.exc()
        self.calls += 1
        self.frames += len(batch)
        self.batch_sizes.append(len(batch))
        if self.delay_s:
            time.sleep(self.delay_s * len(batch))
        out = np.stack([self.rule(im) for im in batch])
        return out[0] if single else out
