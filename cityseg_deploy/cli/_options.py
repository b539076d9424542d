"""Options shared by the run-stage commands (eval, predict, check, bench): declared once here."""
from __future__ import annotations

import click

from ..errors import CitysegError
from ..precision import RUN_PRECISIONS

DEVICE = click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")
THREADS = click.option("--threads", type=int, default=None, help="CPU threads (default: all)")
SPLIT = click.option("--split", default="val", show_default=True)
PRECISION = click.option("--precision", type=click.Choice(RUN_PRECISIONS),
                         default=None, help="run precision where the backend chooses it "
                                            "(or MODEL@bf16; a checkpoint on CUDA: fp16 by default, "
                                            "fp32 = IEEE, tf32 = TF32 tensor cores)")


def _int_list(value: str | None, what: str) -> list[int]:
    if not value:
        return [1]
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise CitysegError(f"{what} {value!r}: expected integers separated by commas, e.g. 1,4") from None
    if not out or any(v < 1 for v in out):
        raise CitysegError(f"{what} {value!r}: values must be >= 1")
    return out
