"""``cityseg eval``: Tables 1 and 2 of any artifact on a split, or of prediction PNGs from any tool."""
from __future__ import annotations

import click

from ..errors import CitysegError
from ._app import app
from ._engine import engine_options, ray_options
from .options import model_run_options, option, runner_options


@app.command("eval")
@option("max_pixels")
@click.argument("model", required=False)
@click.option("--data", "data_root", required=True, help="Cityscapes-layout root")
@option("split")
@option("json")
@click.option("--pred-dir", default=None, help="score prediction PNGs from this folder instead")
@click.option("--pred-format", type=click.Choice(["labelIds", "trainIds"]), default="labelIds",
              show_default=True)
@click.option("--label-set", default=None, help="class set of the data (default: the model's; "
                                                 "cityscapes19 for --pred-dir)")
@model_run_options(precision=True, batch=True)
@click.option("--no-progress", is_flag=True)
@engine_options
def eval_cmd(model, data_root, split, json_path, pred_dir, pred_format, label_set, device, precision,
             threads, batch, runner_option, no_progress, **engine_kw):
    """Score MODEL (any artifact) or --pred-dir PNGs on a split: Table 2 and Table 1."""
    from ..evaluation import evaluate, evaluate_pred_dir
    from ..metrics.tables import table1_markdown, table2_markdown, write_eval_json

    if (model is None) == (pred_dir is None):
        raise CitysegError("give either MODEL or --pred-dir DIR (not both, not neither)")
    options = runner_options(runner_option, *([model] if model else []))
    ray = ray_options(engine_kw, batch=batch, threads=threads)
    engine = None
    if options and (ray is not None or pred_dir is not None):
        raise CitysegError("--runner-option applies to a MODEL run here (--engine local)")
    if ray is not None:
        if pred_dir is not None:
            raise CitysegError("--engine ray runs a MODEL; --pred-dir is scored here")
        from ..scale.ray_batch import RayEngine

        engine = RayEngine(ray)
    if pred_dir is not None:
        doc = evaluate_pred_dir(pred_dir, data_root, split=split, pred_format=pred_format,
                                label_set=label_set or "cityscapes19", progress=not no_progress)
    else:
        doc = evaluate(model, data_root, split=split, device=device, precision=precision,
                       threads=threads, batch=batch, label_set=label_set, progress=not no_progress,
                       engine=engine, **options)
    name = doc["model"]
    if doc.get("runner"):
        click.echo(f"runner: {doc['runner']}")
    click.echo(table2_markdown({name: doc}))
    click.echo(table1_markdown({name: doc}))
    if json_path:
        write_eval_json(json_path, doc, name)
        click.echo(f"wrote {json_path}")
