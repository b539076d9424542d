"""Options shared by the run-stage commands (eval, predict, check, bench): declared once here."""
from __future__ import annotations

import click

from ..errors import CitysegError
from ..precision import PRECISIONS

DEVICE = click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")
THREADS = click.option("--threads", type=int, default=None, help="CPU threads (default: all)")
SPLIT = click.option("--split", default="val", show_default=True)
PRECISION = click.option("--precision", type=click.Choice(PRECISIONS),
                         default=None, help="run precision where the backend chooses it "
                                            "(or MODEL@bf16)")


def _trust_code(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        from ..trust import allow_untrusted

        allow_untrusted()  # each untrusted file is named in a warning line when it is loaded
    return value


# Every command that loads a model takes it (a flag like convert-weights' --trust-pickle; it sets
# the process-wide switch in trust.py, so the command's own signature does not change).
TRUST_CODE = click.option("--trust-code", is_flag=True, expose_value=False, callback=_trust_code,
                          help="load .pt2 packages and TensorRT engines that this machine's "
                               "'cityseg export' did not write (they run native code when loaded)")


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
