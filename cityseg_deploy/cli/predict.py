"""``cityseg predict``: one PNG per image of a split or of any frames (``--images``), here or on Ray."""
from __future__ import annotations

import shlex

import click

from ..errors import CitysegError
from ._app import app
from ._engine import engine_options, ray_options
from .options import model_run_options, option, runner_options


@app.command("predict")
@option("max_pixels")
@click.argument("model")
@click.option("--data", "data_root", default=None, help="Cityscapes-layout root (scored on the way)")
@click.option("--images", default=None,
              help="any frames instead: a folder (not recursive), a glob or a .txt list; "
                   "writes OUT/<stem>.png, no score")
@option("split")
@click.option("--out", required=True, help="output folder for the PNGs")
@click.option("--format", "fmt", type=click.Choice(["labelIds", "trainIds", "color", "overlay"]),
              default="labelIds", show_default=True)
@model_run_options(precision=True, batch=True)
@click.option("--no-progress", is_flag=True)
@click.option("--layout", type=click.Choice(["flat", "cities"]), default="flat", show_default=True,
              help="flat: OUT/<stem>_leftImg8bit.png; cities: OUT/<city>/... (official layout; "
                   "needed when two cities hold the same image name)")
@engine_options
@click.option("--overwrite", is_flag=True, help="--engine ray: redo outputs that are already complete")
def predict_cmd(model, data_root, images, split, out, fmt, device, precision, threads, batch,
                runner_option, no_progress, layout, overwrite, **engine_kw):
    """Write one PNG per image of a split (labelIds = the official submission format) or of
    any folder of frames (--images)."""
    from ..evaluation import predict_split

    if (data_root is None) == (images is None):
        raise CitysegError("give either --data ROOT or --images DIR|GLOB|LIST (not both, not neither)")
    options = runner_options(runner_option, model)
    ray = ray_options(engine_kw, batch=batch, threads=threads)
    if options and ray is not None:
        raise CitysegError("--runner-option applies to --engine local (Ray actors load the model "
                           "with its defaults)")
    if images is not None:
        if layout != "flat":  # frames have no city: the option would be silently ignored
            raise CitysegError("--layout cities needs --data (the official layout's city folders); "
                               "--images writes OUT/<stem>.png")
        _predict_images(model, images, out, ray, fmt=fmt, device=device, precision=precision,
                        threads=threads, batch=batch, progress=not no_progress, overwrite=overwrite,
                        options=options)
        return
    if ray is not None:
        from ..scale.ray_batch import ray_predict

        res = ray_predict(model, data_root, out, ray, split=split, fmt=fmt, device=device,
                          precision=precision, overwrite=overwrite, progress=not no_progress,
                          layout=layout)
        if res["skipped"]:
            click.echo(f"skipped {res['skipped']} complete outputs (--overwrite redoes them)")
        if res["metrics"] is None:
            click.echo(f"nothing to do: all {res['skipped']} outputs in {res['out']} are complete")
            return
    else:
        res = predict_split(model, data_root, out, split=split, fmt=fmt, device=device,
                            precision=precision, threads=threads, batch=batch, progress=not no_progress,
                            layout=layout, **options)
        if res["metrics"] is None:  # a model of another label set (coco21, custom2): nothing to score
            if res.get("runner"):
                click.echo(f"runner: {res['runner']}")
            click.echo(f"wrote {res['written']} {fmt} PNGs to {res['out']} (not scored: the model's "
                       "label set is not a Cityscapes one)")
            return
    if res.get("runner"):
        click.echo(f"runner: {res['runner']}")
    click.echo(f"wrote {res['written']} {fmt} PNGs to {res['out']} (mIoU on the way: "
               f"{100 * res['metrics']['miou']:.2f}); {_predict_hint(model, data_root, split, res['out'], fmt)}")


def _predict_images(model, images, out, ray, *, fmt, device, precision, threads, batch, progress,
                    overwrite, options) -> None:
    """``predict --images`` on this process or (``ray`` not None) on a Ray actor pool."""
    if ray is not None:
        from ..scale.ray_batch import ray_predict_images

        res = ray_predict_images(model, images, out, ray, fmt=fmt, device=device, precision=precision,
                                 overwrite=overwrite, progress=progress)
        if res["skipped"]:
            click.echo(f"skipped {res['skipped']} complete outputs (--overwrite redoes them)")
    else:
        from ..evaluation.predict import predict_images

        res = predict_images(model, images, out, fmt=fmt, device=device, precision=precision,
                             threads=threads, batch=batch, progress=progress, **options)
    if res.get("runner"):
        click.echo(f"runner: {res['runner']}")
    click.echo(f"wrote {res['written']} {fmt} PNGs to {res['out']}")


def _predict_hint(model: str, data_root: str, split: str, out: str, fmt: str) -> str:
    """What to do with the PNGs: label PNGs can be scored; color/overlay ones are for people."""
    q = shlex.quote
    if fmt in ("labelIds", "trainIds"):
        return (f"score them with 'cityseg eval --pred-dir {q(str(out))} --data {q(str(data_root))} "
                f"--split {q(split)}{' --pred-format trainIds' if fmt == 'trainIds' else ''}'")
    return (f"{fmt} PNGs are for viewing, not scoring; for scoreable label PNGs run "
            f"'cityseg predict {q(str(model))} --data {q(str(data_root))} --split {q(split)} "
            f"--out {q(str(out) + '_labelIds')}'")
