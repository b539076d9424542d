"""``cityseg train``: parse options, call :func:`cityseg_deploy.training.fit`, print the outcome.

Runs under torchrun too (``torchrun --nproc-per-node N -m cityseg_deploy train ...``): the
training room reads the distributed environment; only rank 0 prints.
"""
from __future__ import annotations

import shlex

import click

from ._app import app
from .options import option


@app.command()
@option("max_pixels")
@click.option("--recipe", "recipe", required=True,
              help="recipe YAML path, or a name from training/ (e.g. unet_small)")
@click.option("--data", "data_root", required=True, type=click.Path(),
              help="Cityscapes root (leftImg8bit/, gtFine/), e.g. from 'cityseg data synth'")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="run folder: best.pt, last.pt, log.csv, report.md, curves.png, tensorboard/")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="override the recipe's epochs")
@click.option("--lr", type=float, default=None, help="override the recipe's learning rate")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="override the recipe's batch size (per process)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override any recipe key (YAML value, dotted keys: --set augment.hflip=0); repeatable")
@click.option("--resume", is_flag=True, help="continue the run in --out from its last.pt")
@click.option("--overwrite", is_flag=True, help="start afresh even if --out holds a run")
@option("device", default=None, show_default="cuda when visible")
@click.option("--no-progress", is_flag=True, help="no progress bar (one line per epoch only)")
@click.pass_context
def train(ctx: click.Context, recipe: str, data_root: str, out_dir: str, epochs: int | None,
          lr: float | None, batch_size: int | None, sets: tuple[str, ...], resume: bool,
          overwrite: bool, device: str | None, no_progress: bool) -> None:
    """Train a network from a recipe; validate every epoch; keep best.pt and last.pt."""
    from ..training import TrainingInterrupted, fit, load_recipe, parse_override
    from ..training.distributed import env_from_torchrun
    from ..training.recipe import merge_resume_overrides
    from ..training.resume import saved_overrides

    overrides = dict(parse_override(s) for s in sets)
    for key, value in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size)):
        if value is not None:
            overrides[key] = value
    main = env_from_torchrun().is_main
    echo = click.echo if main else (lambda *a, **k: None)
    if resume:  # the run continues with the options it was started with, plus what is given now
        overrides, notes = merge_resume_overrides(saved_overrides(out_dir), overrides)
        for note in notes:
            echo(f"resume: {note}")
    spec = load_recipe(recipe, overrides)
    try:
        result = fit(spec, data_root, out_dir, device=device, resume=resume, overwrite=overwrite,
                     progress=not no_progress, log=echo, overrides=overrides)
    except TrainingInterrupted as exc:
        echo(f"stopped: {exc}".replace("RECIPE", shlex.quote(recipe)), err=True)
        ctx.exit(130)
        return
    best = result["best"]
    if best is not None:
        echo(f"best val mIoU {100 * best['miou']:.2f}% (per-pixel {100 * best['per_pixel']:.2f}%) "
             f"at epoch {result['best_epoch']}; {result['epochs_run']} epochs in "
             f"{result['seconds']:.1f} s")
    echo(f"wrote {result['best_path']}, {result['last_path']}, {out_dir}/report.md, {out_dir}/curves.png")
    echo(f"next: cityseg eval {result['best_path']} --data {data_root}   |   "
         f"cityseg export {result['best_path']} --format onnx")
