"""Shared fixtures: one tiny synthetic Cityscapes root for the whole session.

Why session-scoped: every stage's tests (reader, training, export checks, eval) need a dataset in
the official layout; synthesising it once keeps the suite fast and every test on the same data.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from cityseg_deploy.data.synth import synthesize

SYNTH_SIZE = (64, 128)  # (H, W)


@pytest.fixture(scope="session", autouse=True)
def private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cityseg's per-user data folder (trust list, AOTInductor probe verdicts) in a temporary
    folder for the session, set in the environment so that CLI children use it too: tests never
    read or change the user's ~/.local/share/cityseg, and start from an empty trust list."""
    import os

    from cityseg_deploy.trust import DATA_ENV, TRUST_ENV

    folder = tmp_path_factory.mktemp("cityseg_data")
    saved = {k: os.environ.get(k) for k in (DATA_ENV, TRUST_ENV)}
    os.environ[DATA_ENV] = str(folder)
    os.environ.pop(TRUST_ENV, None)
    yield folder
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def no_trust_code_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--trust-code`` sets a process-wide switch (trust.allow_untrusted): one in-process CLI
    test using it must not make the next test trust every package."""
    from cityseg_deploy.trust import TRUST_ENV

    monkeypatch.delenv(TRUST_ENV, raising=False)
SYNTH_TRAIN, SYNTH_VAL = 6, 4


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Cityscapes-layout root with 6 train + 4 val synthetic scenes at 64x128 (seed 0).

    Treat it as read-only: tests that damage a dataset make their own copy.
    """
    root = tmp_path_factory.mktemp("synth") / "cityscapes"
    return synthesize(root, n_train=SYNTH_TRAIN, n_val=SYNTH_VAL, size=SYNTH_SIZE, seed=0)


@pytest.fixture
def no_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every bf16 capability check answer "no", whatever CPU runs the test.

    Why: the refusal and emulation paths for bf16 must be exercised on every machine — an AMD
    EPYC with avx512_bf16 or an Intel Xeon with AMX would otherwise skip them or take the other
    branch (tests never depend on the CPU's instruction sets, only on what they force).
    """
    from cityseg_deploy.system import machine
    from cityseg_deploy.export import openvino as ov_export
    from cityseg_deploy.runtime import openvino_backend, torch_backend

    for module in (machine, torch_backend, openvino_backend, ov_export):
        monkeypatch.setattr(module, "has_native_bf16", lambda: False)
