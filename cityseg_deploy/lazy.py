"""The one way to import a heavy or optional library where it is used: ``lazy_import(name)``.

Why a helper: an import inside a function hides a dependency from whoever reads the module's
header or draws the import graph.  Internal modules are imported at the top (they are light);
a library that is slow to import or an optional extra (onnxruntime, openvino, tensorrt, ray,
matplotlib) is imported through this function, so ``grep lazy_import`` lists every such edge,
and a missing one is one ``error:`` line naming what to install.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import CitysegError

#: what to install when a library is missing (pip's spelling)
INSTALL = {"onnxruntime": "pip install 'cityseg-deploy[cpu]' (or onnxruntime-gpu for CUDA)",
           "openvino": "pip install 'cityseg-deploy[cpu]'",
           "tensorrt": "pip install tensorrt (needs an NVIDIA GPU)",
           "ray": "pip install 'cityseg-deploy[scale]'",
           "matplotlib": "pip install matplotlib"}


def lazy_import(name: str, *, hint: str | None = None, message: str | None = None) -> ModuleType:
    """``importlib.import_module(name)``; a missing module is a CitysegError saying what to
    install (``hint``), or ``message`` as a whole."""
    try:
        return importlib.import_module(name)
    except ImportError:
        top = name.split(".")[0]
        how = hint or INSTALL.get(top, f"pip install {top}")
        raise CitysegError(message or f"{top} is not installed; {how}") from None


__all__ = ["INSTALL", "lazy_import"]
