"""``--engine local|ray`` and the Ray options shared by predict, eval, check and segment.

Thin: the options and one function that turns them into
:class:`cityseg_deploy.scale.ray_batch.RayOptions`; Ray itself is imported only when asked for.
"""
from __future__ import annotations

from typing import Any, Callable

import click


def engine_options(fn: Callable) -> Callable:
    """Attach ``--engine --address --actors --cpus-per-actor --gpus-per-actor --verbose``."""
    options = [
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="ray: a pool of Ray actors (needs the 'scale' extra)"),
        click.option("--address", default=None,
                     help="Ray cluster: auto | HOST:PORT | ray://HOST:PORT (default: start a local one)"),
        click.option("--actors", type=click.IntRange(min=1), default=None,
                     help="Ray actors, each holding one loaded model (default: as many as the "
                          "cluster's nodes hold: node CPUs / CPUs per actor)"),
        click.option("--cpus-per-actor", type=click.FloatRange(min=0.0, min_open=True), default=None,
                     help="CPUs each Ray actor reserves (default: its --threads, 1; at most a node's)"),
        click.option("--gpus-per-actor", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
                     help="GPUs each Ray actor reserves (fractions share a GPU)"),
        click.option("--verbose", is_flag=True, help="--engine ray: show Ray's own logs and reports"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def ray_options(kw: dict[str, Any], *, batch: int = 1, threads: int | None = None):
    """Pop the engine options from a command's kwargs; RayOptions, or None for ``--engine local``."""
    engine = kw.pop("engine", "local")
    address, actors, gpus = kw.pop("address", None), kw.pop("actors", None), kw.pop("gpus_per_actor", 0.0)
    cpus, verbose = kw.pop("cpus_per_actor", None), kw.pop("verbose", False)
    if engine != "ray":
        if address is not None or actors is not None or gpus or cpus is not None or verbose:
            from ..errors import CitysegError

            raise CitysegError("--address, --actors, --cpus-per-actor, --gpus-per-actor and "
                               "--verbose need --engine ray")
        return None
    from ..scale import check_ray
    from ..scale.ray_batch import RayOptions

    check_ray()
    return RayOptions(address=address, actors=actors, gpus_per_actor=gpus, batch=batch, threads=threads,
                      cpus_per_actor=cpus, verbose=verbose)
