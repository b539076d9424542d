"""A fixed pool of Ray actors fed from a queue: what ``--engine ray`` runs its batches and streams on.

Why not Ray Data's actor pool: on a small box its start-up was most of a short job's time — it
starts three helper actors of its own (stats, actor locations, autoscaling coordinator), each a
Python process importing pyarrow, before the first image — and it hides what the driver needs
to control (how many calls wait per actor, stopping at Ctrl-C).  This pool is the part we use:
``actors`` actors created with ``max_restarts=-1`` and ``max_task_retries=-1`` (an actor that
dies — killed, OOM, node lost — is replaced by Ray and the call it held is retried, so every
item completes exactly once), each kept ``depth`` calls deep so it never waits for the driver,
results yielded as they complete.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator


def create_actors(ray: Any, cls: type, n: int, *, cpus: float, gpus: float, args: tuple = (),
                  kwargs: dict[str, Any] | None = None) -> list[Any]:
    """``n`` restartable actors of ``cls`` reserving ``cpus`` CPUs and ``gpus`` GPUs each."""
    remote = ray.remote(cls).options(num_cpus=cpus, num_gpus=gpus or None, max_restarts=-1,
                                     max_task_retries=-1)
    return [remote.remote(*args, **(kwargs or {})) for _ in range(n)]


def run(ray: Any, actors: list[Any], items: Iterable[Any], call: Callable[[Any, Any], Any], *,
        depth: int = 2) -> Iterator[Any]:
    """``call(actor, item)`` (which returns an ObjectRef) for every item, at most ``depth`` calls
    waiting per actor; yields each result (``ray.get``) as it completes, in completion order."""
    queue = iter(items)
    pending: dict[Any, Any] = {}  # ref -> actor
    load = {id(a): 0 for a in actors}

    def feed() -> None:
        for actor in sorted(actors, key=lambda a: load[id(a)]):
            while load[id(actor)] < depth:
                item = next(queue, _END)
                if item is _END:
                    return
                pending[call(actor, item)] = actor
                load[id(actor)] += 1

    feed()
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            actor = pending.pop(ref)
            load[id(actor)] -= 1
            result = ray.get(ref)
            feed()
            yield result


def kill(ray: Any, actors: list[Any]) -> None:
    """End the pool's actors now (no restart); errors of actors already gone are ignored."""
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - gone already
            pass


_END = object()
