"""Reader for the official Cityscapes layout, serving either label set at any size.

Why one reader: training, evaluation, calibration and ``data check`` must agree on which image
goes with which label and on how void ids become 255; a second copy of that logic would drift.

Layout (DESIGN.md): ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` with
``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`` (official ids, void included).  When a
``<stem>_gtFine_labelTrainIds.png`` exists (written by cityscapesscripts' ``createTrainIdLabelImgs``)
it is preferred: it already holds 19-class trainIds, mapped to the 10-class set with
``train_id_lut``.  Images are resized bilinearly, labels with nearest neighbour (never blended).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..errors import CitysegError
from ..fileio import read_label, read_rgb
from ..labels import LabelSet, get_label_set

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_ID_SUFFIX = "_gtFine_labelIds.png"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"
HINT = ("point --data at a Cityscapes root holding leftImg8bit/ and gtFine/, "
        "or make one with 'cityseg data synth ROOT'")


@dataclass(frozen=True)
class Sample:
    """One image/label pair; ``label_kind`` says what the label PNG holds."""

    image: Path
    label: Path
    stem: str          # <city>_<seq>_<frame>
    city: str
    label_kind: str = "labelIds"  # or "trainIds"


def check_root(root: str | os.PathLike) -> Path:
    """``root`` as a Path, or a CitysegError when it is not a Cityscapes-style directory."""
    root = Path(root)
    if not root.is_dir():
        raise CitysegError(f"{root}: no such dataset directory; {HINT}")
    if not (root / "leftImg8bit").is_dir():
        raise CitysegError(f"{root}: no leftImg8bit/ folder inside; {HINT}")
    return root


def image_files(root: Path, split: str) -> list[Path]:
    """All ``*_leftImg8bit.png`` of a split, sorted (city, then stem) for a stable order."""
    return sorted((root / "leftImg8bit" / split).glob(f"*/*{IMAGE_SUFFIX}"))


def label_for(root: Path, split: str, image: Path) -> tuple[Path | None, str]:
    """The label file of an image (trainIds preferred), or ``(None, "")`` when there is none."""
    stem = image.name[: -len(IMAGE_SUFFIX)]
    folder = root / "gtFine" / split / image.parent.name
    train = folder / f"{stem}{TRAIN_ID_SUFFIX}"
    if train.is_file():
        return train, "trainIds"
    ids = folder / f"{stem}{LABEL_ID_SUFFIX}"
    if ids.is_file():
        return ids, "labelIds"
    return None, ""


def find_samples(root: str | os.PathLike, split: str) -> list[Sample]:
    """Every image of ``split`` paired with its label; errors name the first bad file."""
    root = check_root(root)
    images = image_files(root, split)
    if not images:
        raise CitysegError(
            f"{root / 'leftImg8bit' / split}: no *{IMAGE_SUFFIX} images in split {split!r}; {HINT}")
    samples = []
    for image in images:
        label, kind = label_for(root, split, image)
        if label is None:
            stem = image.name[: -len(IMAGE_SUFFIX)]
            expected = root / "gtFine" / split / image.parent.name / f"{stem}{LABEL_ID_SUFFIX}"
            raise CitysegError(f"{image}: no label file (expected {expected}); "
                               "add it or remove the image")
        stem = image.name[: -len(IMAGE_SUFFIX)]
        samples.append(Sample(image, label, stem, image.parent.name, kind))
    return samples


def check_headers(samples: list[Sample], split: str = "") -> None:
    """Check every image and label header (and that each pair's sizes agree) before any work.

    Why: training met a truncated val image only after a whole epoch (and its ``last.pt`` then
    blocked the re-run); 45 bytes per file find empty, truncated and non-PNG files up front.
    """
    from ..fileio import png_header_size

    for sample in samples:
        image_hw = png_header_size(sample.image)
        label_hw = png_header_size(sample.label)
        if image_hw != label_hw:
            raise CitysegError(f"{sample.label}: label is {label_hw[1]}x{label_hw[0]} (WxH) but its "
                               f"image is {image_hw[1]}x{image_hw[0]}; re-create the pair"
                               + (f" (split {split})" if split else ""))


def label_lut(label_set: LabelSet, label_kind: str) -> np.ndarray:
    """256-entry lookup from what the PNG holds (label ids or trainIds) to ``label_set``."""
    return label_set.train_id_lut() if label_kind == "trainIds" else label_set.id_lut()


def resize_pair(image: np.ndarray, label: np.ndarray | None,
                size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize to ``size`` (H, W): image bilinear, label nearest (classes are never blended)."""
    if size is None or tuple(image.shape[:2]) == tuple(size):
        return image, label
    h, w = size
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    if label is not None:
        label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    return image, label


def load_sample(sample: Sample, label_set: LabelSet,
                size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one pair, check the sizes agree, map to ``label_set`` and resize."""
    image = read_rgb(sample.image)
    raw = read_label(sample.label)
    if raw.shape != image.shape[:2]:
        raise CitysegError(
            f"{sample.label}: label is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image "
            f"{sample.image.name} is {image.shape[1]}x{image.shape[0]}; re-create the label")
    label = label_lut(label_set, sample.label_kind)[raw]
    return resize_pair(image, label, size)


class CityscapesDataset:
    """A map-style dataset: ``ds[i] -> (image HxWx3 uint8 RGB, label HxW uint8)``.

    ``label_set`` is ``"cityscapes19"`` or ``"cityscapes10"`` (void → 255), ``size`` an optional
    (H, W) to resize to, ``transform`` an optional ``f(image, label) -> anything`` applied last
    (augmentations, :func:`~cityseg_deploy.data.transforms.to_tensor`).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", *,
                 label_set: str | LabelSet = "cityscapes19", size: tuple[int, int] | None = None,
                 transform: Callable | None = None):
        self.root = Path(root)
        self.split = split
        self.label_set = get_label_set(label_set) if isinstance(label_set, str) else label_set
        self.size = tuple(size) if size is not None else None
        self.transform = transform
        self.samples = find_samples(self.root, split)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image, label = load_sample(self.samples[index], self.label_set, self.size)
        if self.transform is not None:
            return self.transform(image, label)
        return image, label

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.label_set.class_names

    @property
    def num_classes(self) -> int:
        return self.label_set.num_classes
