"""Helpers several test modules share (pytest puts tests/ on the import path).

Why a module and not fixtures: these are plain functions and classes a test calls with its own
arguments; one copy keeps every "one error line" assertion and every calibration feed the same.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def error_line(capsys) -> str:
    """The one ``error: ...`` line a failed command wrote to stderr; fails on a traceback or more."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


class FeedReader:
    """onnxruntime's CalibrationDataReader over in-memory arrays fed to the input ``name``."""

    def __init__(self, images: list[np.ndarray], name: str = "x"):
        self.images, self.name, self.i = images, name, 0

    def get_next(self) -> dict[str, Any] | None:
        if self.i >= len(self.images):
            return None
        self.i += 1
        return {self.name: self.images[self.i - 1]}


def random_checkpoint(path, arch: str, *, size: tuple[int, int] = (64, 128), seed: int = 0):
    """An untrained, seeded checkpoint of ``arch`` at ``size``: what export tests need when the
    weights' accuracy does not matter (trained ones: test_runtime_artifacts.make_checkpoint)."""
    import torch

    from cityseg_deploy.models.checkpoint import ModelMeta, save_checkpoint
    from cityseg_deploy.models.registry import build_model

    torch.manual_seed(seed)
    meta = ModelMeta.for_arch(arch, input_size=size)
    save_checkpoint(path, build_model(arch, **meta.arch_args).eval(), meta)
    return path
