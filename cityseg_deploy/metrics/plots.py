"""Figures from metric results: per-class IoU bars and the normalised confusion heat map.

Why here: the report's figures come from the same dicts as its tables.  Matplotlib runs with
the Agg backend (no display needed) and each figure is written atomically, so an interrupted
run never leaves a truncated image.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..fileio import atomic_path
from ..lazy import lazy_import


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    lazy_import("matplotlib").use("Agg", force=True)
    return lazy_import("matplotlib.pyplot")


def save_figure(fig, path: str | os.PathLike, dpi: int = 120, *, tight: bool = True) -> Path:
    """Write ``fig`` atomically (format from the suffix, PNG by default) and close it, even when
    writing fails: every figure of the project goes through here."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    finally:
        pyplot().close(fig)
    return path


def plot_class_iou(results: Mapping[str, dict], path: str | os.PathLike, *,
                   title: str = "Per-class IoU", dpi: int = 120) -> Path:
    """Grouped bars: one group per class, one bar per model (absent classes left empty)."""
    plt = pyplot()
    names: dict[str, None] = {}
    for r in results.values():
        names.update(dict.fromkeys(r["per_class_iou"]))
    classes = list(names)
    x = np.arange(len(classes))
    width = 0.8 / max(1, len(results))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(classes) * max(1, len(results)) ** 0.5), 4))
    for k, (model, r) in enumerate(results.items()):
        values = [r["per_class_iou"].get(c) for c in classes]
        heights = [np.nan if v is None else 100.0 * v for v in values]
        ax.bar(x + (k - (len(results) - 1) / 2) * width, heights, width,
               label=f"{model} (mIoU {100 * r['miou']:.1f})")
    ax.set_xticks(x, classes, rotation=60, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path, dpi)


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Each truth row divided by its total (recall per cell); empty rows stay zero."""
    m = np.asarray(matrix, dtype=np.float64)
    sums = m.sum(1, keepdims=True)
    return np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)


def plot_confusion(matrix: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str],
                   path: str | os.PathLike, *, title: str = "Confusion (rows: truth, normalised)",
                   dpi: int = 120) -> Path:
    """Heat map of the row-normalised confusion matrix (rows = truth, columns = prediction)."""
    plt = pyplot()
    m = normalise_rows(np.asarray(matrix))
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * n + 2), max(4.0, 0.45 * n + 1)))
    im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if m[i, j] >= 0.01:
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if m[i, j] > 0.6 else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path, dpi)
