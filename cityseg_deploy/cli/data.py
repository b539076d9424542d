"""``cityseg data synth`` and ``cityseg data check`` (DESIGN.md's CLI contract).

Thin: parse options, call :mod:`cityseg_deploy.data`, print.  ``check`` exits 0 when the root is
clean, 1 when it lists problems, 2 (via CitysegError) when the root is missing or empty.
"""
from __future__ import annotations

import click

from ._app import app
from .options import option


@app.group()
def data() -> None:
    """Make and audit datasets in the official Cityscapes layout."""


@data.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--train", "n_train", type=click.IntRange(min=0), default=20, show_default=True,
              help="training images to synthesise")
@click.option("--val", "n_val", type=click.IntRange(min=0), default=10, show_default=True,
              help="validation images to synthesise")
@option("size", default="256x512", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="random seed (same seed, same bytes)")
def synth(out: str, n_train: int, n_val: int, size: str, seed: int) -> None:
    """Write synthetic street scenes to OUT in the official Cityscapes layout."""
    from tqdm import tqdm

    from ..data.synth import synthesize

    hw = size
    with tqdm(total=n_train + n_val, unit="img", desc="synth", leave=False) as bar:
        root = synthesize(out, n_train=n_train, n_val=n_val, size=hw, seed=seed,
                          progress=bar.update)
    click.echo(f"wrote {n_train} train + {n_val} val scenes ({hw[0]}x{hw[1]}) to {root}")
    click.echo(f"next: cityseg data check {root}")


@data.command()
@click.argument("root", type=click.Path())
@option("max_pixels")
def check(root: str) -> None:
    """Audit ROOT: counts, sizes, unmatched files, class frequencies, every problem."""
    from ..data.check import check_dataset, format_report

    report = check_dataset(root)
    click.echo(format_report(report))
    if not report.ok:
        raise ProblemsFound(f"{root}: {len(report.problems)} problem(s) found (listed above)")


class ProblemsFound(click.ClickException):
    """Exit status 1: the audit ran and found problems (not a usage error, which is 2).

    A ClickException carries its exit code through both the console script and ``cli.run``.
    """

    exit_code = 1
