"""Shared fixtures: one tiny synthetic Cityscapes root for the whole session.

Why session-scoped: every stage's tests (reader, training, export checks, eval) need a dataset in
the official layout; synthesising it once keeps the suite fast and every test on the same data.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from cityseg_deploy.data.synth import synthesize

SYNTH_SIZE = (64, 128)  # (H, W)
SYNTH_TRAIN, SYNTH_VAL = 6, 4


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Cityscapes-layout root with 6 train + 4 val synthetic scenes at 64x128 (seed 0).

    Treat it as read-only: tests that damage a dataset make their own copy.
    """
    root = tmp_path_factory.mktemp("synth") / "cityscapes"
    return synthesize(root, n_train=SYNTH_TRAIN, n_val=SYNTH_VAL, size=SYNTH_SIZE, seed=0)
