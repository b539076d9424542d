"""Evaluation room: ``evaluate`` (a model or a folder of PNGs), ``predict_split``, ``check``.

All three stream one split through a :class:`~cityseg_deploy.runtime.Segmenter` and one
:class:`~cityseg_deploy.metrics.ConfusionMatrix`; none knows a backend's internals.
"""
from __future__ import annotations

from .evaluate import evaluate, evaluate_pred_dir, run_split
from .predict import predict_split

from .check import check  # noqa: E402  (binds the function over the submodule name)

__all__ = ["check", "evaluate", "evaluate_pred_dir", "predict_split", "run_split"]
