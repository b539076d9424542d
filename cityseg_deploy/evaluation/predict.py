"""``cityseg predict``: write one PNG per image of a split, in the official submission format.

Files are named ``<city>_<seq>_<frame>_leftImg8bit.png`` (the image's own name), flat in OUT,
which is what the Cityscapes evaluation scripts and benchmark server look for; formats:
``labelIds`` (official label ids), ``trainIds`` (class indices), ``color`` (palette RGB),
``overlay`` (palette blended over the image).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CitysegError
from ..fileio import write_png
from .evaluate import label_set_of_model, run_split

FORMATS = ("labelIds", "trainIds", "color", "overlay")


def render(labels: np.ndarray, image: np.ndarray, label_set, fmt: str) -> tuple[np.ndarray, bool]:
    """(array to write, is_rgb) for a prediction in ``fmt``."""
    if fmt == "labelIds":
        return label_set.to_label_id_lut()[labels], False
    if fmt == "trainIds":
        return labels, False
    colour = label_set.colorize(labels)
    if fmt == "color":
        return colour, True
    blend = (0.5 * image.astype(np.float32) + 0.5 * colour.astype(np.float32)).astype(np.uint8)
    return blend, True


def predict_split(model, data_root: str | os.PathLike, out: str | os.PathLike, *, split: str = "val",
                  fmt: str = "labelIds", device: str = "cpu", precision: str | None = None,
                  threads: int | None = None, batch: int = 1, progress: bool = True,
                  **options: Any) -> dict:
    """Predict every image of ``split`` into ``out``; returns ``{"written", "out", "metrics"}``."""
    from .. import runtime

    if fmt not in FORMATS:
        raise CitysegError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    segmenter = model if hasattr(model, "run") else runtime.load(
        model, device=device, precision=precision, threads=threads, **options)
    label_set = label_set_of_model(segmenter.meta, where=str(segmenter.path))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def save(sample, image, labels, _logits):
        array, rgb = render(labels, image, label_set, fmt)
        path = out / f"{sample.stem}_leftImg8bit.png"
        write_png(path, array, rgb=rgb)
        written.append(str(path))

    cm = run_split(segmenter, data_root, split=split, batch=batch, progress=progress,
                   desc=f"predict {Path(segmenter.path).name}", on_prediction=save)
    return {"written": len(written), "out": str(out), "format": fmt,
            "metrics": cm.compute(segmenter.meta.class_names)}
