"""How many actors a Ray job runs and what each reserves, from the sizes of the cluster's *nodes*.

Why: an actor lives on one node, so what it reserves must fit the largest node — the old rule
(the cluster's CPUs / ``--actors``) asked 2 CPUs of two 1-CPU nodes and the job waited forever
(``Pending Demands: {'CPU': 2.0}``).  Here an actor reserves ``--cpus-per-actor`` (default: its
runner threads, 1 unless ``--threads`` says more), never more than a node has; the default
``--actors`` is as many as fit (the sum over nodes of node CPUs // CPUs per actor) — measured
fastest on one box (bench/results/ray_batch.md: two 1-thread actors beat one 2-thread one).
Before the job starts, :func:`wait_placeable` reserves the actors' bundles as a placement group:
a job the cluster cannot hold within 30 s is one error naming what it asked for and what the
cluster has, instead of a silent hang.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import CitysegError

PLACEMENT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Node:
    cpus: float
    gpus: float


@dataclass(frozen=True)
class Plan:
    """What the job runs: ``actors`` actors of ``cpus`` CPUs (and ``gpus``), ``threads`` each."""

    actors: int
    cpus: float
    gpus: float
    threads: int

    def ask(self) -> str:
        gpu = f" + {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.actors} actor(s) x {self.cpus:g} CPU{gpu}"


def nodes_of(ray: Any) -> list[Node]:
    """The alive nodes' total CPUs and GPUs (``ray.nodes()``)."""
    out = []
    for n in ray.nodes():
        if n.get("Alive", n.get("alive", False)):
            res = n.get("Resources", {})
            out.append(Node(float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))))
    return out


def describe(nodes: list[Node]) -> str:
    """``2 nodes: 1, 1 CPUs`` (and their GPUs when any)."""
    cpus = ", ".join(f"{n.cpus:g}" for n in nodes)
    text = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: {cpus} CPUs"
    if any(n.gpus for n in nodes):
        text += "; " + ", ".join(f"{n.gpus:g}" for n in nodes) + " GPUs"
    return text


def fits(node: Node, cpus: float, gpus: float) -> int:
    """How many actors of ``cpus`` CPUs and ``gpus`` GPUs one node holds."""
    n = math.floor(node.cpus / cpus + 1e-9) if cpus > 0 else 1 << 30
    if gpus > 0:
        n = min(n, math.floor(node.gpus / gpus + 1e-9))
    return max(0, n)


def plan(nodes: list[Node], *, work: int, actors: int | None = None, threads: int | None = None,
         cpus_per_actor: float | None = None, gpus_per_actor: float = 0.0) -> Plan:
    """The job's shape for ``work`` items (rows or streams) on ``nodes``; a CitysegError when
    what was asked cannot fit any node (or the cluster at all)."""
    if not nodes:
        raise CitysegError("the Ray cluster has no alive node")
    largest_cpu = max(n.cpus for n in nodes)
    largest_gpu = max(n.gpus for n in nodes)
    if gpus_per_actor > largest_gpu:
        raise CitysegError(f"--gpus-per-actor {gpus_per_actor:g}: no node of the Ray cluster has that "
                           f"many GPUs ({describe(nodes)}); drop the option or join a cluster with "
                           f"GPUs (--address)")
    if cpus_per_actor is not None:
        if cpus_per_actor > largest_cpu:
            raise CitysegError(f"--cpus-per-actor {cpus_per_actor:g}: no node of the Ray cluster has "
                               f"that many CPUs ({describe(nodes)}); ask at most {largest_cpu:g}")
        cpus = float(cpus_per_actor)
    else:
        cpus = float(min(threads or 1, largest_cpu)) if largest_cpu >= 1 else largest_cpu
    threads = threads or max(1, int(cpus))
    capacity = sum(fits(n, cpus, gpus_per_actor) for n in nodes)
    if actors is None:
        actors = max(1, min(capacity, work))
    elif actors > capacity:
        shape = Plan(actors, cpus, gpus_per_actor, threads)
        raise CitysegError(f"--actors {actors}: the job asks for {shape.ask()}, the Ray cluster holds "
                           f"{capacity} such actor(s) ({describe(nodes)}); lower --actors or "
                           f"--cpus-per-actor")
    else:
        actors = max(1, min(actors, work))
    return Plan(actors, cpus, gpus_per_actor, threads)


def wait_placeable(ray: Any, shape: Plan, nodes: list[Node], timeout_s: float | None = None) -> None:
    """Reserve the job's bundles once (a placement group, released at once): an error naming the
    ask and the cluster if they cannot all be placed within ``timeout_s`` (other jobs hold the
    resources, or a node left)."""
    from ray.util.placement_group import placement_group, remove_placement_group

    timeout_s = PLACEMENT_TIMEOUT_S if timeout_s is None else timeout_s
    bundle: dict[str, float] = {"CPU": shape.cpus}
    if shape.gpus:
        bundle["GPU"] = shape.gpus
    pg = placement_group([dict(bundle) for _ in range(shape.actors)], strategy="SPREAD")
    try:
        ready = pg.wait(timeout_seconds=timeout_s)
    finally:
        remove_placement_group(pg)
    if not ready:
        free = ray.available_resources()
        raise CitysegError(f"the Ray job could not be placed within {timeout_s:g} s: it asks for "
                           f"{shape.ask()}; the cluster has {describe(nodes)}, "
                           f"{free.get('CPU', 0.0):g} CPUs free now (other jobs hold the rest?); "
                           f"lower --actors / --cpus-per-actor or free the cluster")
