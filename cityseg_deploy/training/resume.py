"""A run folder's rules and ``last.pt``'s train state: what lets ``--resume`` continue a run exactly.

Why apart from the loop: which folders a run may write into, which checkpoint it may continue and
how the random generators are saved are decided before (or beside) training, and the CLI reads a
run's saved overrides without importing the loop.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CitysegError
from ..runlock import LOCK_NAME
from ..models.checkpoint import ModelMeta, read_checkpoint

RUN_FILES = ("best.pt", "last.pt", "log.csv", "report.md", "curves.png", "tensorboard")


# --------------------------------------------------------------------------- RNG state
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states, in weights_only-loadable types."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- the run folder
def check_out_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a folder this run may not write into: nothing to resume, or an earlier run's files."""
    last_path = out_dir / "last.pt"
    if resume and not last_path.is_file():
        raise CitysegError(f"{last_path}: nothing to resume (no last.pt in {out_dir}); "
                           "start without --resume")
    if not resume and last_path.is_file() and not overwrite:
        raise CitysegError(f"{out_dir}: already holds a training run (last.pt); continue it with "
                           "--resume, or choose another --out (or --overwrite)")
    if not resume and not overwrite and out_dir.is_dir() and any(
            p.name != LOCK_NAME for p in out_dir.iterdir()):
        raise CitysegError(f"{out_dir}: not empty; train into a new or empty folder, or pass "
                           "--overwrite to replace the run files there")
    if out_dir.exists() and not out_dir.is_dir():
        raise CitysegError(f"--out {out_dir}: a file is in the way; give a folder path")


def clear_run_files(out_dir: Path) -> list[str]:
    """Delete what a run writes (and their hidden temporaries) from ``out_dir``; return the names.

    Why: ``--overwrite`` used to replace files one by one as the new run reached them, so an
    interrupted run left the old ``report.md`` and ``curves.png`` beside the new weights.
    """
    removed = []
    if not out_dir.is_dir():
        return removed
    for entry in out_dir.iterdir():
        name = entry.name
        if name in RUN_FILES or any(name.startswith(f".{f}.") for f in RUN_FILES):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(name)
    return sorted(removed)


# --------------------------------------------------------------------------- the checkpoint to resume
def read_resume_checkpoint(last_path: Path, meta: ModelMeta) -> dict[str, Any]:
    """``last.pt``, checked to fit the recipe's model and to hold a train state."""
    checkpoint = read_checkpoint(last_path)
    _check_resume_fits(last_path, ModelMeta.from_dict(checkpoint.get("meta"), where=str(last_path)), meta)
    if "train_state" not in checkpoint:
        raise CitysegError(f"{last_path}: holds no train state to resume from; start a new run")
    return checkpoint


def _check_resume_fits(path: Path, saved: ModelMeta, meta: ModelMeta) -> None:
    for key in ("arch", "label_set", "arch_args"):
        if getattr(saved, key) != getattr(meta, key):
            raise CitysegError(
                f"{path}: cannot resume: the checkpoint has {key} {getattr(saved, key)!r} but the "
                f"recipe asks for {getattr(meta, key)!r}; use the run's own recipe or a new --out")


def saved_overrides(out_dir: str | Path) -> dict[str, Any] | None:
    """The command-line overrides the run in ``out_dir`` was started (or last resumed) with.

    None when there is no ``last.pt`` (nothing to resume; ``fit`` says so) or when it predates
    saving them.  Read before the recipe is built, so ``--resume`` alone rebuilds the same recipe.
    """
    path = Path(out_dir) / "last.pt"
    if not path.is_file():
        return None
    saved = (read_checkpoint(path)["meta"].get("extra") or {}).get("overrides")
    return dict(saved) if isinstance(saved, dict) else None
