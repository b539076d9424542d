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
@option("json")
@engine_options
@click.option("--overwrite", is_flag=True, help="--engine ray: redo outputs that are already complete")
def predict_cmd(model, data_root, images, split, out, fmt, device, precision, threads, batch,
                runner_option, no_progress, layout, json_path, overwrite, **engine_kw):
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
        res = _predict_images(model, images, out, ray, fmt=fmt, device=device, precision=precision,
                              threads=threads, batch=batch, progress=not no_progress,
                              overwrite=overwrite, options=options)
        _write_json(json_path, res)
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
            _write_json(json_path, res)
            return
    else:
        res = predict_split(model, data_root, out, split=split, fmt=fmt, device=device,
                            precision=precision, threads=threads, batch=batch, progress=not no_progress,
                            layout=layout, **options)
        if res["metrics"] is None:  # a model of another label set (coco21, custom2): nothing to score
            if res.get("runner"):
                click.echo(f"runner: {res['runner']}")
            click.echo(_wrote(res, fmt, "not scored: the model's label set is not a Cityscapes one"))
            _write_json(json_path, res)
            return
    if res.get("runner"):
        click.echo(f"runner: {res['runner']}")
    miou = f"mIoU on the way: {100 * res['metrics']['miou']:.2f}"
    click.echo(f"{_wrote(res, fmt, miou)}; {_predict_hint(model, data_root, split, res['out'], fmt)}")
    _write_json(json_path, res)


def _wrote(res: dict, fmt: str, note: str | None = None) -> str:
    """``wrote N FMT PNGs to OUT in S s (R img/s; NOTE)``: the speed where this process timed
    its loop (a Ray run has none), then ``note``."""
    timed = res.get("seconds") is not None
    parts = ([f"{res['images_per_s']:.1f} img/s"] if timed else []) + ([note] if note else [])
    return (f"wrote {res['written']} {fmt} PNGs to {res['out']}"
            + (f" in {res['seconds']:.2f} s" if timed else "")
            + (f" ({'; '.join(parts)})" if parts else ""))


def _write_json(path: str | None, res: dict) -> None:
    """``--json FILE``: the result (written, out, format, runner, seconds, images_per_s, metrics)."""
    if path:
        import json

        from ..fileio import write_text_atomic

        write_text_atomic(path, json.dumps(res, indent=2) + "\n")
        click.echo(f"wrote {path}")


def _predict_images(model, images, out, ray, *, fmt, device, precision, threads, batch, progress,
                    overwrite, options) -> dict:
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
    click.echo(_wrote(res, fmt))
    return res


def _predict_hint(model: str, data_root: str, split: str, out: str, fmt: str) -> str:
    """What to do with the PNGs: label PNGs can be scored; color/overlay ones are for people."""
    q = shlex.quote
    if fmt in ("labelIds", "trainIds"):
        return (f"score them with 'cityseg eval --pred-dir {q(str(out))} --data {q(str(data_root))} "
                f"--split {q(split)}{' --pred-format trainIds' if fmt == 'trainIds' else ''}'")
    return (f"{fmt} PNGs are for viewing, not scoring; for scoreable label PNGs run "
            f"'cityseg predict {q(str(model))} --data {q(str(data_root))} --split {q(split)} "
            f"--out {q(str(out) + '_labelIds')}'")
