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
