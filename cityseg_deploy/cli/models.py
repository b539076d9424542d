"""``cityseg models`` and ``cityseg convert-weights`` (DESIGN.md's CLI contract).

Thin: parse options, call :mod:`cityseg_deploy.models`, print.
"""
from __future__ import annotations

from pathlib import Path

import click

from ._app import app
from .options import option


@app.command("models")
@option("size", show_default="each model's own input size")
def models_cmd(size: str | None) -> None:
    """List the architectures: family, parameters, GFLOPs, label set, input size."""
    from ..models.flops import all_model_stats, format_table

    click.echo(format_table(all_model_stats(size=size)))


@app.command("convert-weights")
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("--arch", required=True, help="architecture the file holds, e.g. deeplabv3_resnet50, "
              "unet, denseaspp161, denseaspp121 (see 'cityseg models')")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="checkpoint to write (.pt)")
@click.option("--trust-pickle", is_flag=True,
              help="unpickle SRC in full when it holds more than tensors, arrays and plain containers "
                   "(a whole pickled model); a crafted file can then run any code: only for files you trust")
def convert_weights_cmd(src: str, arch: str, out: str, trust_pickle: bool) -> None:
    """Convert published weights SRC (torchvision, milesial, DenseASPP release, ImageNet
    backbones) into a cityseg checkpoint.  SRC is read without running code from it: only
    tensors, numpy arrays and plain containers are unpickled unless --trust-pickle."""
    from ..models.checkpoint import read_meta
    from ..models.convert import convert_weights

    if trust_pickle:
        click.echo(f"warning: --trust-pickle: {src} is unpickled in full; a crafted file can run "
                   f"any code on this machine", err=True)
    path = convert_weights(src, arch, out, trust_pickle=trust_pickle)
    meta = read_meta(path)
    note = " (backbone only; head freshly initialised)" if meta.extra.get("backbone_only") else ""
    click.echo(f"wrote {path}: {meta.arch}, {meta.num_classes} classes ({meta.label_set}){note}")
    note, command = _convert_hint(str(path), meta)
    if note:
        click.echo(note)
    click.echo(f"next: {command}")


def _convert_hint(path: str, meta) -> tuple[str | None, str]:
    """(note, next command).  Cityscapes-class weights are scored as they are; other class sets
    (COCO's 21) and backbone-only files are a starting point for training, and the hint says so."""
    import shlex

    from ..training.recipe import available_recipes

    if meta.extra.get("backbone_only"):
        note = "the heads are freshly initialised: train from these weights before scoring them"
    elif meta.label_set not in ("cityscapes19", "cityscapes10"):
        note = (f"{meta.num_classes} {meta.label_set} classes are not a Cityscapes class set: "
                "fine-tune (tensors that fit are copied, the classifier is re-initialised)")
    else:
        return None, f"cityseg eval {shlex.quote(path)} --data ROOT"
    from ..models.registry import get_entry

    recipes = available_recipes()
    if meta.arch in recipes:
        recipe, model = meta.arch, ""
    else:  # e.g. denseaspp121: the family's full-size recipe, with the model swapped
        family = get_entry(meta.arch).family
        recipe = next((name for name in recipes if not name.endswith("_small")
                       and _family(name) == family), "RECIPE")
        model = f" --set model={meta.arch}"
    out = shlex.quote(f"runs/{Path(path).stem}_ft")
    return note, (f"cityseg train --recipe {recipe} --data ROOT --out {out}{model} "
                  f"--set init_weights={shlex.quote(path)}")


def _family(name: str) -> str | None:
    from ..errors import CitysegError
    from ..models.registry import get_entry

    try:
        return get_entry(name).family
    except CitysegError:  # a recipe named after no architecture
        return None
