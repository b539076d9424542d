"""The precision names every stage shares (export, the artifacts' io, the runners, the CLI).

Why a module of its own: the tuple was written out in four places that could drift; this one has
no imports, so the command line can use it without loading torch.
"""
from __future__ import annotations

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")

__all__ = ["PRECISIONS"]
