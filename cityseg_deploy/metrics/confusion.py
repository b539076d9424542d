"""The one metric engine: a streamed confusion matrix and everything derived from it.

Why a confusion matrix: every number of the report's Tables 1 and 2 (per-pixel accuracy, micro /
macro / weighted Jaccard, per-class and category IoU) is a function of the KxK counts, so a split
is scored without ever holding all its pixels, and partial matrices from several processes or
machines simply add up.

Definitions (DESIGN.md's metric contract), over pixels whose truth is not 255:
``jaccard.*`` equal ``sklearn.metrics.jaccard_score(y_true, y_pred, average=...)`` on the flattened
valid pixels with sklearn's default label set (classes present in truth or prediction);
``per_class_iou`` is TP/(TP+FP+FN), ``None`` where a class is absent from both; ``miou`` the mean
of the non-null IoUs (= the official Cityscapes IoU = ``macro``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import CitysegError
from ..labels import CITYSCAPES19, IGNORE_INDEX, LABEL_SETS, label_set_for


def _as_tensor(x, device: torch.device | None) -> torch.Tensor:
    """numpy or torch → torch on ``device`` (or where it already is), flattened."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if device is not None and t.device != device:
        t = t.to(device)
    return t.reshape(-1)


class ConfusionMatrix:
    """KxK int64 counts, rows = ground truth, columns = prediction; truth 255 is ignored.

    ``update`` runs ``torch.bincount`` where the predictions live (CPU or GPU), so evaluation on
    a GPU never copies label maps back to the host.
    """

    def __init__(self, num_classes: int, device: torch.device | str | None = None):
        if num_classes < 1 or num_classes > IGNORE_INDEX:
            raise CitysegError(f"num_classes={num_classes}: must be between 1 and 255")
        self.num_classes = num_classes
        self.device = torch.device(device) if device is not None else None
        self.matrix: torch.Tensor | None = None
        if self.device is not None:
            self.reset()

    def reset(self) -> None:
        """Zero the counts (keeps the device)."""
        n = self.num_classes
        self.matrix = torch.zeros((n, n), dtype=torch.int64, device=self.device)

    def update(self, pred, target) -> None:
        """Add one batch: ``pred`` and ``target`` of the same shape (any), integer class maps.

        Trick for speed: ``index = target * K + pred`` over *all* pixels with ``minlength``
        256·K, so ignored pixels (target 255) fall in bins past K·K and need no masking copy.
        """
        if self.device is None:
            self.device = pred.device if isinstance(pred, torch.Tensor) else torch.device("cpu")
        if self.matrix is None:
            self.reset()
        p = _as_tensor(pred, self.device)
        t = _as_tensor(target, self.device)
        if p.shape != t.shape:
            raise CitysegError(f"prediction has {p.numel()} pixels but ground truth "
                               f"{t.numel()}; predict at the label's size")
        counts = self._bincount(p, t)
        n = self.num_classes
        if counts[n * n: IGNORE_INDEX * n].any():
            bad = int(t[(t >= n) & (t != IGNORE_INDEX)][0])
            raise CitysegError(f"ground truth holds class {bad} but the label set has {n} "
                               "classes (0..{}, 255 = ignore); map label ids first".format(n - 1))
        self.matrix += counts[: n * n].view(n, n)

    def _bincount(self, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = self.num_classes
        if p.numel() and (int(p.max()) >= n or (p.dtype.is_signed and int(p.min()) < 0)):
            raise CitysegError(f"prediction holds a class outside 0..{n - 1}; "
                               "is it a map of another label set?")
        if t.dtype.is_signed and t.numel() and int(t.min()) < 0:
            raise CitysegError("ground truth holds negative classes; map label ids first")
        # int32 index arithmetic is exact here (< 256*256) and halves memory traffic vs int64
        index = t.to(torch.int32) * n + p.to(torch.int32)
        return torch.bincount(index, minlength=(IGNORE_INDEX + 1) * n)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix's counts (e.g. from another shard of the split)."""
        if other.num_classes != self.num_classes:
            raise CitysegError("cannot merge confusion matrices of different class counts")
        if self.matrix is None:
            self.reset()
        if other.matrix is not None:
            self.matrix += other.matrix.to(self.matrix.device)
        return self

    def reduce_from_all_processes(self) -> None:
        """Sum the counts over all torch.distributed processes (no-op when not distributed)."""
        if self.matrix is None:
            self.reset()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.all_reduce(self.matrix)

    def numpy(self) -> np.ndarray:
        """The counts as an int64 numpy KxK array."""
        if self.matrix is None:
            return np.zeros((self.num_classes, self.num_classes), np.int64)
        return self.matrix.cpu().numpy().astype(np.int64)

    def compute(self, class_names: Sequence[str] | None = None) -> dict:
        """The eval JSON's metric keys (see :func:`metrics_from_confusion`)."""
        return metrics_from_confusion(self.numpy(), class_names)


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """Names of the label set with that many classes, else ``class_0 ...``."""
    label_set = label_set_for(num_classes)
    if label_set is not None:
        return label_set.class_names
    return tuple(f"class_{i}" for i in range(num_classes))


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def class_iou(matrix: np.ndarray) -> np.ndarray:
    """TP/(TP+FP+FN) per class; NaN where a class is absent from truth and prediction."""
    m = matrix.astype(np.float64)
    tp = np.diag(m)
    return _safe_div(tp, m.sum(0) + m.sum(1) - tp)


def jaccard_from_confusion(matrix: np.ndarray) -> dict[str, float]:
    """micro / macro / weighted Jaccard exactly as sklearn's ``jaccard_score`` defines them.

    sklearn's default label set is the classes present in truth or prediction; classes outside
    it contribute nothing to any average (their TP, FP and FN are zero, their support too).
    """
    m = matrix.astype(np.float64)
    tp = np.diag(m)
    truth, predicted = m.sum(1), m.sum(0)
    union = truth + predicted - tp
    present = union > 0
    if not present.any():
        return {"micro": 0.0, "macro": 0.0, "weighted": 0.0}
    iou = tp[present] / union[present]
    support = truth[present]
    weighted = float((iou * support).sum() / support.sum()) if support.sum() > 0 else 0.0
    return {"micro": float(tp.sum() / union.sum()), "macro": float(iou.mean()),
            "weighted": weighted}


def category_iou(matrix: np.ndarray) -> dict[str, float | None]:
    """Cityscapes category IoU for a 19-class matrix: classes of one category count as one.

    TP = predictions inside the category for truth inside it; FP/FN cross its border.  Same
    definition as cityscapesscripts' ``getIouScoreForCategory``.
    """
    categories = CITYSCAPES19.category_of()
    m = matrix.astype(np.float64)
    out: dict[str, float | None] = {}
    for name in dict.fromkeys(categories):  # ordered, unique
        sel = np.asarray([c == name for c in categories])
        tp = m[np.ix_(sel, sel)].sum()
        fn = m[np.ix_(sel, ~sel)].sum()
        fp = m[np.ix_(~sel, sel)].sum()
        den = tp + fp + fn
        out[name] = float(tp / den) if den > 0 else None
    return out


def metrics_from_confusion(matrix: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """``{num_classes, classes, per_pixel, jaccard, per_class_iou, miou, category_iou, confusion}``.

    ``category_iou`` is filled only for the 19-class Cityscapes set (merged sets span categories).
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    n = matrix.shape[0]
    names = tuple(class_names) if class_names is not None else default_class_names(n)
    if len(names) != n:
        raise CitysegError(f"{len(names)} class names for a {n}-class confusion matrix")
    total = int(matrix.sum())
    iou = class_iou(matrix)
    valid = iou[~np.isnan(iou)]
    is19 = n == 19 and tuple(names) == LABEL_SETS["cityscapes19"].class_names
    return {
        "num_classes": n,
        "classes": list(names),
        "per_pixel": float(np.trace(matrix) / total) if total else 0.0,
        "jaccard": jaccard_from_confusion(matrix),
        "per_class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(names, iou)},
        "miou": float(valid.mean()) if valid.size else 0.0,
        "category_iou": category_iou(matrix) if is19 else None,
        "confusion": matrix.tolist(),
    }
