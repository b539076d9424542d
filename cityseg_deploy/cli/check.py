"""``cityseg check``: candidates against a baseline (deltas, agreement, gate; ``--layerwise``)."""
from __future__ import annotations

import click

from ._app import app
from ._engine import engine_options, ray_options
from .options import model_run_options, option, runner_options


@app.command("check")
@option("max_pixels")
@click.argument("baseline")
@click.argument("candidates", nargs=-1, required=True)
@click.option("--data", "data_root", required=True,
              help="Cityscapes-layout root whose --split every model is scored on")
@option("split")
@option("json")
@click.option("--max-miou-drop", type=float, default=None,
              help="gate: exit 1 when a candidate's mIoU is more than PTS points below the baseline")
@click.option("--out", default=None, help="folder for Markdown/CSV tables, JSON and the delta plot")
@model_run_options(batch=True)
@click.option("--logit-images", type=int, default=4, show_default=True,
              help="images over which logit error statistics are computed")
@click.option("--emulate-bf16", is_flag=True,
              help="run CHECKPOINT@bf16 candidates on a CPU without native bf16 (slow emulation, "
                   "same bf16 rounding): bf16 accuracy before deploying to AVX-512 BF16/AMX")
@click.option("--baseline-size", type=click.Choice(["candidate", "own"]), default="candidate",
              show_default=True,
              help="candidate: run the baseline at the candidates' input size (is the artifact "
                   "faithful?); own: at the baseline's own size (what does the smaller input cost?)")
@click.option("--layerwise", is_flag=True,
              help="per-layer error of each CANDIDATE (ONNX/OpenVINO) vs BASELINE, the fp32 ONNX "
                   "graph: SQNR, cosine, relative L2, error introduced; ranked (docs/accuracy.md)")
@click.option("--layerwise-images", type=click.IntRange(min=1), default=4, show_default=True,
              help="--layerwise: validation images compared")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True,
              help="--layerwise: rows of the terminal table")
@click.option("--no-progress", is_flag=True)
@engine_options
def check_cmd(baseline, candidates, data_root, split, json_path, max_miou_drop, out, device, threads,
              batch, runner_option, logit_images, emulate_bf16, baseline_size, layerwise, layerwise_images, top, no_progress,
              **engine_kw):
    """Accuracy of CANDIDATE artifacts vs BASELINE: deltas, agreement, logit error, gate."""
    from ..evaluation.check import check

    options = runner_options(runner_option, baseline, *candidates)
    if layerwise:
        from ..evaluation.layerwise import run_cli

        for line in run_cli(baseline, candidates, data_root, split=split, images=layerwise_images,
                            top=top, out=out, json_path=json_path, progress=not no_progress):
            click.echo(line)
        return
    ray = ray_options(engine_kw, batch=batch, threads=threads)
    engine = None
    if ray is not None:
        _local_only(options)
        from ..scale.ray_batch import RayEngine

        engine = RayEngine(ray)
    report = check(baseline, candidates, data_root, split=split, device=device, threads=threads,
                   batch=batch, max_miou_drop=max_miou_drop, out=out, json_path=json_path,
                   logit_images=logit_images, progress=not no_progress, emulate_bf16=emulate_bf16,
                   baseline_size=baseline_size, engine=engine, runner_options=options)
    for doc in [report.get("baseline") or {}] + list(report.get("candidates") or []):
        if doc.get("runner"):
            click.echo(f"runner ({doc.get('model')}): {doc['runner']}")
    click.echo(report["markdown"])
    if out:
        click.echo(f"wrote tables, check.json and check_delta.png to {out}")
    gate = report.get("gate")
    if gate and not gate["passed"]:
        for failure in gate["failures"]:
            click.echo(f"check failed: {failure}", err=True)
        click.get_current_context().exit(1)


def _local_only(options: dict) -> None:
    if options:
        from ..errors import CitysegError

        raise CitysegError("--runner-option applies to --engine local (Ray actors load the model "
                           "with its defaults)")
