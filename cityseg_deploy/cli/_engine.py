"""``--engine local|ray`` and the Ray options shared by predict, eval, check and segment.

Thin: the options and one function that turns them into
:class:`cityseg_deploy.scale.ray_batch.RayOptions`; Ray itself is imported only when asked for.
"""
from __future__ import annotations

from typing import Any, Callable

import click


def engine_options(fn: Callable) -> Callable:
    """Attach ``--engine --address --actors --gpus-per-actor`` to a command."""
    options = [
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="ray: a pool of Ray actors (needs the 'scale' extra)"),
        click.option("--address", default=None,
                     help="Ray cluster: auto | HOST:PORT | ray://HOST:PORT (default: start a local one)"),
        click.option("--actors", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Ray actors, each holding one loaded model"),
        click.option("--gpus-per-actor", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
                     help="GPUs each Ray actor reserves (fractions share a GPU)"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def ray_options(kw: dict[str, Any], *, batch: int = 1, threads: int | None = None):
    """Pop the engine options from a command's kwargs; RayOptions, or None for ``--engine local``."""
    engine = kw.pop("engine", "local")
    address, actors, gpus = kw.pop("address", None), kw.pop("actors", 1), kw.pop("gpus_per_actor", 0.0)
    if engine != "ray":
        if address is not None or actors != 1 or gpus:
            from ..errors import CitysegError

            raise CitysegError("--address, --actors and --gpus-per-actor need --engine ray")
        return None
    from ..scale import require_ray
    from ..scale.ray_batch import RayOptions

    require_ray()
    return RayOptions(address=address, actors=actors, gpus_per_actor=gpus, batch=batch, threads=threads)
