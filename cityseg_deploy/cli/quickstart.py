"""``cityseg quickstart``: the README's main job (see :mod:`cityseg_deploy.quickstart`)."""
from __future__ import annotations

from pathlib import Path

import click

from ._app import app
from .options import option


@app.command()
@click.option("--out", "out", default="quickstart", show_default=True, type=click.Path(file_okay=False),
              help="Folder for data, runs, artifacts, checks, benchmarks and report.md; re-running "
                   "into it reuses steps finished with the same options.")
@click.option("--train", "n_train", default=48, show_default=True, help="Synthetic training images.")
@click.option("--val", "n_val", default=12, show_default=True, help="Synthetic validation images.")
@option("size", default="128x256", show_default=True)
@click.option("--epochs", type=int, default=None, help="Override every recipe's epoch count.")
@click.option("--models", default="deeplabv3_small,unet_small,denseaspp_small", show_default=True,
              help="Comma-separated small presets to train.")
@click.option("--aoti/--no-aoti", default=True, show_default=True,
              help="Also export AOTInductor packages (compiles C++; about a minute per model).")
@option("threads")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True,
              help="Redo the steps an earlier run into OUT ran with other options (else refused).")
def quickstart(out: str, n_train: int, n_val: int, size: str, epochs: int | None, models: str,
               aoti: bool, threads: int | None, seed: int, overwrite: bool) -> None:
    """Synthetic data → train DeepLabV3 / U-Net / DenseASPP → export ONNX fp32/int8, OpenVINO int8,
    AOTInductor → check (Tables 1 and 2) → bench → segment a video → OUT/report.md."""
    from ..quickstart import QuickstartConfig, quickstart as run_quickstart

    cfg = QuickstartConfig(out=Path(out), models=tuple(m.strip() for m in models.split(",") if m.strip()),
                           n_train=n_train, n_val=n_val, size=size, seed=seed,
                           epochs=epochs, aoti=aoti, threads=threads, log=click.echo,
                           overwrite=overwrite)
    report = run_quickstart(cfg)
    click.echo(f"done: open {report}")
