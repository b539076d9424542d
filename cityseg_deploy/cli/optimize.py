"""``cityseg optimize CKPT --data ROOT``: the fastest artifact for this machine within an mIoU
budget, as a deploy folder (see :mod:`cityseg_deploy.optimize`)."""
from __future__ import annotations

import click

from ._app import app
from ..optimize.candidates import CPU, CUDA
from .options import option


@app.command("optimize")
@click.argument("checkpoint", type=click.Path())
@click.option("--data", required=True, type=click.Path(),
              help="Cityscapes root: train split calibrates int8, val split scores every candidate")
@option("device")
@click.option("--max-drop", type=float, default=0.5, show_default=True,
              help="mIoU points a candidate may lose against torch fp32 and still be picked")
@click.option("--out", default=None, type=click.Path(),
              help="deploy folder to write (deploy.json + the chosen artifact) [CKPT_deploy/]")
@option("threads")
@click.option("--candidates", default=None,
              help="comma-separated candidates to try (default: every one that fits the device); "
                   "cpu: " + ", ".join(c.slug for c in CPU[1:]) + "; cuda: "
                   + ", ".join(c.slug for c in CUDA[1:]) + " (torch_fp32, the baseline, always runs)")
@click.option("--rounds", type=click.IntRange(min=1), default=20, show_default=True,
              help="interleaved timing rounds (each runs every candidate once)")
@click.option("--time-budget", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="seconds of timing after which no new round starts (5 rounds at least)")
@click.option("--no-progress", is_flag=True)
def optimize_cmd(checkpoint, data, device, max_drop, out, threads, candidates, rounds, time_budget,
                 no_progress):
    """Export every runner that fits DEVICE, check each against torch fp32 on the val split,
    time them interleaved, and write OUT/deploy.json beside the fastest within --max-drop.
    OUT then works as MODEL in every command."""
    from ..optimize import optimize, summary_lines

    only = [c.strip() for c in candidates.split(",") if c.strip()] if candidates else None
    record = optimize(checkpoint, data, device=device, max_drop=max_drop, out=out, threads=threads,
                      candidates=only, rounds=rounds, budget_s=time_budget, progress=not no_progress, log=click.echo)
    for line in summary_lines(record):
        click.echo(line)
    pick = record["pick"]
    click.echo(f"deploy: {record['path']} → {pick['artifact']} ({pick['name']}): {pick['why']}")
