"""The images an export calibrates and checks on, in the form its graph takes.

Calibration reads the train split of ``--calib-data``, the parity check the val split of
``--data`` (each falling back to the other's root, and saying so); without either, seeded random
images stand in.  :class:`~cityseg_deploy.export.job.ExportJob` calls these with its settings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import CitysegError


def pick_root(split: str, root: Path | None, data: Path | None,
              calib_data: Path | None) -> tuple[Path | None, str]:
    """The root ``split`` is read from, and a note when it is the other option's root."""
    given = root
    root = root or (data if split == "val" else calib_data) or data or calib_data
    # Say so when the images come from the other option's root (mIoU on --calib-data's val split).
    borrowed = ""
    if given is None and root is not None:
        usual = data if split == "val" else calib_data
        if usual is None:
            borrowed = f" (the {split} split of {'--data' if root == data else '--calib-data'})"
    return root, borrowed


def read_images(root: Path, split: str, limit: int, size: Sequence[int], label_set: str,
                labels: bool) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(N×H×W×3 uint8 RGB at ``size``, N×H×W labels or None, N) from ``split`` of ``root``."""
    from ..data.cityscapes import CityscapesDataset, check_root, image_files, resize_pair
    from ..fileio import read_rgb
    from ..labels import LABEL_SETS

    files = image_files(check_root(root), split)
    if not files:
        raise CitysegError(f"{root}: no images in the {split!r} split; point --data/--calib-data "
                           f"at a Cityscapes root (leftImg8bit/{split}/...)")
    if not labels or label_set not in LABEL_SETS:
        # Calibration (and a model of another label set, coco21/custom2) needs images
        # only: no label files are read, so no label set has to match.
        ims = np.stack([resize_pair(read_rgb(f), None, tuple(size))[0] for f in files[:limit]])
        return ims, None, len(ims)
    ds = CityscapesDataset(root, split, label_set=label_set, size=tuple(size))
    pairs = [ds[i] for i in range(min(limit, len(ds)))]
    ims = np.stack([p[0] for p in pairs])
    lab = np.stack([p[1] for p in pairs]) if labels and pairs[0][1] is not None else None
    return ims, lab, len(ims)


def random_images(limit: int, size: Sequence[int], seed: int) -> np.ndarray:
    """Seeded stand-ins (at most 4) when no root is given."""
    rng = np.random.default_rng(seed)
    h, w = size
    return rng.integers(0, 256, size=(min(limit, 4), h, w, 3), dtype=np.uint8)


def to_input(images: np.ndarray, preprocess: bool, mean: Sequence[float],
             std: Sequence[float]) -> np.ndarray:
    """uint8 NHWC images → what the graph takes (uint8 NHWC or normalised float NCHW)."""
    if preprocess:
        return np.ascontiguousarray(images)
    mean_ = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    std_ = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return np.ascontiguousarray((x - mean_) / std_)


def batches(x: np.ndarray, batch: int, dynamic: bool) -> Iterator[tuple[np.ndarray, int]]:
    """Split ``x`` into chunks the graph accepts (fixed batch: the last one padded); yields
    (chunk, n_real)."""
    step = max(1, min(batch, x.shape[0])) if dynamic else batch
    for i in range(0, x.shape[0], step):
        chunk = x[i:i + step]
        n = chunk.shape[0]
        if not dynamic and n < step:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - n, axis=0)])
        yield chunk, n


__all__ = ["batches", "pick_root", "random_images", "read_images", "to_input"]


def for_job(job, split: str, limit: int, *, root: Path | None = None, labels: bool = False,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(N×H×W×3 uint8 RGB at ``job``'s export size, N×H×W labels or None, description).

    ``root`` (or the job's ``data`` / ``calib_data``) gives real images; without one, seeded
    random images stand in and the description says so.
    """
    root, borrowed = pick_root(split, root, job.data, job.calib_data)
    if root is None:
        ims = random_images(limit, job.size, seed)
        return ims, None, f"{len(ims)} random images (no --data/--calib-data given)"
    ims, lab, n = read_images(root, split, limit, job.size, job.meta.label_set, labels)
    return ims, lab, f"{n} {split} images of {root}{borrowed}"


def job_input(job, images: np.ndarray) -> np.ndarray:
    """uint8 NHWC images → what ``job``'s graph takes (uint8 NHWC or normalised float NCHW)."""
    return to_input(images, job.preprocess, job.meta.mean, job.meta.std)


def job_batches(job, x: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
    """``x`` in the chunks ``job``'s graph accepts (fixed batch: the last one padded)."""
    return batches(x, job.batch, job.dynamic)
