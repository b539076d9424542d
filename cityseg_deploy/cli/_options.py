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


def _set_max_pixels(_ctx: click.Context, _param: click.Parameter, value: int | None) -> None:
    from ..images_header import set_max_pixels

    set_max_pixels(value)


#: every command that decodes images: the bound read from each image's header before decoding
MAX_PIXELS = click.option(
    "--max-pixels", type=click.IntRange(min=1), default=None, expose_value=False, is_eager=True,
    callback=_set_max_pixels,
    help="refuse an image whose header declares more pixels, before decoding it "
         "(default 64000000; a decompression bomb stops here)")
