"""Connecting to a Ray cluster: the one given by ``--address``, or a local one started here.

Why here: every Ray command (batch engine, serve) joins a cluster the same way, quietly (Ray's own
INFO logs and progress bars would bury the one progress bar the job shows); and every Ray job
shows that bar and turns an actor's user error into its one error line the same way
(:func:`job_progress`).
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import CitysegError
from . import require_ray


def connect(address: str | None = None, *, num_cpus: int | None = None, what: str = "--engine ray") -> Any:
    """Join ``address`` (``auto``, ``ray://HOST:PORT``, ``HOST:PORT``) or start a local cluster.

    An already initialised Ray (a test session, a notebook) is reused as it is.  Returns ``ray``.
    """
    ray = require_ray(what)
    # the C++ core's notes (e.g. on actor restarts) would print past the progress bar
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if ray.is_initialized():
        quiet_data()
        return ray
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False,
                              "configure_logging": True}
    from ..trust import TRUST_ENV, untrusted_allowed

    if untrusted_allowed():  # --trust-code holds in the workers too, on a remote cluster as well
        kwargs["runtime_env"] = {"env_vars": {TRUST_ENV: "1"}}
    if address:
        kwargs["address"] = address
    else:
        # a local cluster's workers are children of this process: they inherit its import path
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        target = address or "a local cluster"
        raise CitysegError(f"--address {target}: could not join the Ray cluster "
                           f"({str(exc).splitlines()[0][:160]}); start one with 'ray start --head' "
                           f"or drop --address for a local one") from None
    quiet_data()
    return ray


def quiet_data() -> None:
    """Ray Data without its own progress bars and logs (the job shows one bar, errors one line)."""
    import ray.data

    # a failed batch is re-raised here as one error line; Ray Data's own report of it is noise
    for name in ("ray", "ray.data", "ray.serve"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False


def cluster_cpus() -> float:
    """Logical CPUs of the cluster (what actors are sized against)."""
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def actor_error(exc: BaseException) -> CitysegError | None:
    """The CitysegError an actor raised, however Ray wrapped it (RayTaskError, UserCodeException)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, CitysegError):
            return CitysegError(str(cause.args[0]) if cause.args else str(cause))
        if isinstance(e, CitysegError) and type(e) is CitysegError:
            return e
        for nxt in (cause, e.__cause__, e.__context__):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    text = str(exc)
    marker = "CitysegError: "
    if marker in text:
        return CitysegError(text.rsplit(marker, 1)[1].strip().splitlines()[0])
    return None


@contextmanager
def job_progress(total: int, desc: str, enabled: bool, *, unit: str) -> Iterator[Any]:
    """One progress bar over a Ray job; an error an actor raised ends the job as its one line."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)
    try:
        yield bar
    except Exception as exc:  # Ray wraps actor errors; a user error stays one line
        user = actor_error(exc)
        if user is not None:
            raise user from None
        raise
    finally:
        bar.close()
