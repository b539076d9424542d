"""The precision names every stage shares (export, the artifacts' io, the runners, the CLI).

Why a module of its own: the tuple was written out in four places that could drift; this one has
no imports, so the command line can use it without loading torch.

``PRECISIONS`` are what an artifact can *hold* (export, the artifacts' io).  ``RUN_PRECISIONS``
add ``tf32``: not a storage format but a way to *run* fp32 weights on NVIDIA tensor cores (10-bit
mantissa products, ~1e-3 relative error), so it is asked for at run time (``MODEL@tf32``) and never
exported.  Only the PyTorch runner on CUDA takes it; on a CPU it is refused rather than silently
run as fp32 (a row called tf32 must have used TF32).
"""
from __future__ import annotations

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")
RUN_PRECISIONS: tuple[str, ...] = PRECISIONS + ("tf32",)

__all__ = ["PRECISIONS", "RUN_PRECISIONS"]
