"""Metrics room: one confusion-matrix engine; tables, JSON and plots all read from it."""
from __future__ import annotations

from .confusion import (ConfusionMatrix, category_iou, class_iou, jaccard_from_confusion,
                        metrics_from_confusion)

__all__ = ["ConfusionMatrix", "category_iou", "class_iou", "jaccard_from_confusion",
           "metrics_from_confusion"]
