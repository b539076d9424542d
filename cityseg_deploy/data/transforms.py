"""Training augmentations on numpy (image, label) pairs, and the tensor conversion.

Why numpy and an explicit ``numpy.random.Generator``: the same seed must give the same batch on
any machine and in any DataLoader worker (seed each worker's generator), so runs can be resumed
and compared.  Geometry acts on image and label together (image bilinear, label nearest, padding
the label with 255 so padded pixels are ignored); photometric jitter acts on the image only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from ..labels import IGNORE_INDEX

Pair = tuple[np.ndarray, np.ndarray]


def random_scale(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                 scale: tuple[float, float] = (0.5, 2.0)) -> Pair:
    """Resize both by one factor drawn uniformly from ``scale`` (multi-scale training)."""
    factor = float(rng.uniform(*scale))
    h, w = label.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return (cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))


def pad_to(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> Pair:
    """Pad bottom/right up to ``size`` (H, W): image with 0, label with 255 (ignored)."""
    h, w = label.shape
    ph, pw = max(0, size[0] - h), max(0, size[1] - w)
    if ph == 0 and pw == 0:
        return image, label
    image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    label = cv2.copyMakeBorder(label, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
    return image, label


def random_crop(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                size: tuple[int, int]) -> Pair:
    """A random ``size`` (H, W) window; smaller inputs are padded first (label with 255)."""
    image, label = pad_to(image, label, size)
    h, w = label.shape
    y = int(rng.integers(0, h - size[0] + 1))
    x = int(rng.integers(0, w - size[1] + 1))
    return (np.ascontiguousarray(image[y:y + size[0], x:x + size[1]]),
            np.ascontiguousarray(label[y:y + size[0], x:x + size[1]]))


def random_hflip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                 p: float = 0.5) -> Pair:
    """Mirror left-right with probability ``p`` (street scenes are left-right symmetric)."""
    if rng.random() < p:
        return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(label[:, ::-1])
    return image, label


def photometric_jitter(image: np.ndarray, rng: np.random.Generator, *, brightness: float = 0.3,
                       contrast: float = 0.3, saturation: float = 0.3,
                       hue: float = 0.05) -> np.ndarray:
    """Brightness, contrast, saturation (factors in 1±x) and hue (fraction of a turn) jitter.

    Applied in a random order like torchvision's ColorJitter, so no fixed pipeline is learnt.
    """
    out = image.astype(np.float32)
    for op in rng.permutation(4):
        if op == 0 and brightness > 0:
            out *= float(rng.uniform(1 - brightness, 1 + brightness))
        elif op == 1 and contrast > 0:
            mean = float(out.mean())  # mean intensity: grey level contrast pivots on
            out = (out - mean) * float(rng.uniform(1 - contrast, 1 + contrast)) + mean
        elif op == 2 and saturation > 0:
            grey = out @ np.asarray([0.299, 0.587, 0.114], np.float32)
            out = (out - grey[..., None]) * float(rng.uniform(1 - saturation, 1 + saturation)) \
                + grey[..., None]
        elif op == 3 and hue > 0:
            out = _shift_hue(np.clip(out, 0, 255), float(rng.uniform(-hue, hue)))
    return np.clip(out, 0, 255).round().astype(np.uint8)


def _shift_hue(image: np.ndarray, shift: float) -> np.ndarray:
    """Rotate hue by ``shift`` turns (float RGB in 0..255 → float RGB)."""
    hsv = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)  # H in degrees
    hsv[..., 0] = (hsv[..., 0] + shift * 360.0) % 360.0
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0


@dataclass
class TrainAugment:
    """The training pipeline: random scale → crop (255-padded) → flip → photometric jitter.

    Holds its own Generator so it can be passed as a dataset ``transform``; give each
    DataLoader worker its own seed (``worker_init_fn``) for reproducible, distinct streams.
    """

    crop: tuple[int, int]
    scale: tuple[float, float] = (0.5, 2.0)
    hflip: float = 0.5
    jitter: bool = True
    seed: int | None = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator | None = None) -> Pair:
        rng = rng if rng is not None else self.rng
        image, label = random_scale(image, label, rng, self.scale)
        image, label = random_crop(image, label, rng, self.crop)
        image, label = random_hflip(image, label, rng, self.hflip)
        if self.jitter:
            image = photometric_jitter(image, rng)
        return image, label


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB uint8 HxWx3 (or NxHxWx3) → float32 CHW (NCHW) tensor, ``(x/255 - mean) / std``.

    The models' contract (INTERFACES.md): inputs are RGB/255 normalised with the checkpoint's
    mean/std.
    """
    array = np.ascontiguousarray(image)
    tensor = torch.from_numpy(array).to(torch.float32).div_(255.0)
    tensor = tensor.movedim(-1, -3)
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return ((tensor - m) / s).contiguous()


def label_to_tensor(label: np.ndarray) -> torch.Tensor:
    """uint8 HxW label map → int64 tensor (what cross-entropy with ignore_index=255 expects)."""
    return torch.from_numpy(np.ascontiguousarray(label)).to(torch.int64)
