"""Reading weights files without running code from them.

A pickle is a program: its ``GLOBAL``/``REDUCE`` opcodes can call any importable function
(``os.system`` included) while the file is read.  Every weights file cityseg reads therefore goes
through PyTorch's restricted unpickler (``torch.load(weights_only=True)``), which admits only
tensors, storages (legacy ``torch.cuda.FloatStorage`` of PyTorch 0.3 files included), dtypes,
``torch.Size`` and plain containers (dict, list, tuple, set, ``OrderedDict``).  This module widens
that allow-list by exactly what published weights also hold: numpy arrays, dtypes and scalars
(``mask_values`` of some U-Net releases, statistics saved next to a state dict).  Nothing that can
call code is added: numpy's reconstructors only build arrays from bytes.

Anything else (a whole pickled ``nn.Module``, a ``__reduce__`` calling a function) is refused with
one line naming the object, unless the user passes ``trust_pickle=True`` (``--trust-pickle``),
which unpickles in full.
"""
from __future__ import annotations

import functools
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CitysegError

TRUST_HINT = ("if you trust the file, re-run with --trust-pickle (it may run code), or load it "
              "with its original code and save its state_dict() instead")


@functools.lru_cache(maxsize=1)
def numpy_safe_globals() -> list[Any]:
    """numpy's array/dtype/scalar reconstructors under the names numpy 1 and numpy 2 pickle them."""
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 | 1
    names: list[Any] = [np.ndarray, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        names += [(core._reconstruct, f"{module}._reconstruct"), (core.scalar, f"{module}.scalar")]
    # numpy >= 1.25 may pickle a dtype through its class (numpy.dtypes.Float32DType, ...).
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        names += [cls for name in dir(dtypes) if name.endswith("DType")
                  and isinstance(cls := getattr(dtypes, name), type)]
    return names


def _refusal(exc: BaseException) -> tuple[str | None, str]:
    """(what the restricted unpickler refused — ``module.name``, or "" for an unnamed object, or
    None when the file is simply not a pickle it can parse —, the reason in one line)."""
    text = str(exc)
    detail = text.split("WeightsUnpickler error:", 1)[-1].strip()
    detail = detail.splitlines()[0][:160] if detail else type(exc).__name__
    match = re.search(r"GLOBAL ([\w.]+)", text)
    if match:
        return match.group(1), detail
    if detail.startswith(("Can only build", "Can only create", "Unsupported class", "Unsupported global")):
        return "", detail
    return None, detail


def load_weights_file(path: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                      trust_pickle: bool = False, what: str = "weights file",
                      hint: str = TRUST_HINT) -> Any:
    """The object inside a ``torch.save``/pickle file, read without running code from it.

    Raises :class:`CitysegError` for a missing, corrupt or truncated file, and for a file that
    needs more than tensors, arrays and containers — unless ``trust_pickle``, which then reads it
    with full unpickling (the caller warns the user).
    """
    path = Path(path)
    if not path.is_file():
        raise CitysegError(f"{path}: no such {what}")
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused, detail = _refusal(exc)
        if not trust_pickle:
            if refused is None:
                raise CitysegError(f"{path}: not a readable PyTorch {what} (UnpicklingError: "
                                   f"{detail})") from None
            found = f"the Python object {refused!r}" if refused else "Python objects"
            raise CitysegError(f"{path}: refused to unpickle {found}: loading it could run code "
                               f"from the file, and cityseg reads only tensors, arrays and plain "
                               f"containers; {hint}") from None
    except Exception as exc:  # corrupt zip, truncated file, bad magic number, ...
        raise CitysegError(f"{path}: not a readable PyTorch {what} ({_first_line(exc)})") from None
    return _load_trusted(path, map_location, what)


def _load_trusted(path: Path, map_location: str | torch.device, what: str) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except ModuleNotFoundError as exc:
        raise CitysegError(f"{path}: a pickled model whose code ({exc.name!r}) is not importable "
                           f"here; save its state_dict() with the original code and convert that") from None
    except Exception as exc:
        raise CitysegError(f"{path}: not a readable PyTorch {what} ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (an empty message gives just the type)."""
    text = str(exc).strip()
    line = text.splitlines()[0][:160] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__
