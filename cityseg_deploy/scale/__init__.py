"""Scale-out engines: batch jobs on a pool of Ray actors, an HTTP service on Ray Serve.

Why a room of its own: Ray is an optional extra (``pip install 'cityseg-deploy[scale]'``); nothing
outside this package imports it, and every entry point here first calls :func:`require_ray`, so a
machine without the extra gets one ``error:`` line naming it instead of an ImportError.
"""
from __future__ import annotations

from ..errors import CitysegError

EXTRA_HINT = "pip install 'cityseg-deploy[scale]' (or: pip install 'ray[data,serve]')"


def require_ray(what: str = "--engine ray", *, serve: bool = False):
    """The ``ray`` module, or a CitysegError naming the extra to install."""
    try:
        import ray
        if serve:
            import ray.serve  # noqa: F401
    except ImportError as exc:
        raise CitysegError(f"{what} needs Ray ({exc.name or 'ray'} is not installed); "
                           f"install the 'scale' extra: {EXTRA_HINT}") from None
    return ray


def check_ray(what: str = "--engine ray") -> None:
    """A CitysegError naming the extra when Ray is not installed — without importing it (Ray
    reads some settings, e.g. ``RAY_AUTH_MODE``, once at import: :mod:`.cluster` sets them first)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # a stub module in sys.modules (tests) or a broken install
        found = False
    if not found:
        raise CitysegError(f"{what} needs Ray (ray is not installed); install the 'scale' extra: "
                           f"{EXTRA_HINT}")
