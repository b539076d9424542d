"""Connecting to a Ray cluster: the one ``--address`` names, or a private local one started here.

Why here: every Ray command (batch engine, serve) joins a cluster the same way, and the ways it
went wrong are one place's job:

- no ``--address`` starts a *private* cluster (``address="local"``, its own temporary folder),
  never one somebody started with ``ray start`` on this machine; ``--address auto`` joins that
  one explicitly;
- its processes never outlive the driver: a watchdog (:mod:`.reaper`) ends them and removes the
  folder however the driver ends (exit, Ctrl-C, SIGTERM, SIGKILL);
- before joining, one gRPC call to the cluster's GCS (milliseconds) tells "nothing listens
  there" and "this cluster wants Ray's token auth" apart from a good address, so each is one
  ``error:`` line with its fix instead of Ray's 20 s of retry warnings; a token this machine
  holds (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``) that the cluster
  accepts is used, as ``ray start`` itself does;
- quiet: Ray's own logs (Python and C++, the ``logging.cc`` line included) stay out of the
  terminal unless ``--verbose``; every Ray job shows one progress bar, and an actor's user error
  ends it as one line (:func:`job_progress`).
"""
from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import CitysegError
from . import check_ray, require_ray

AUTH_DOC = "https://docs.ray.io/en/latest/ray-security/token-auth.html"


class _Private:
    """The private cluster this process started (at most one): its folder and its watchdog."""

    temp_dir: str | None = None
    reaper: subprocess.Popen | None = None


def connect(address: str | None = None, *, num_cpus: int | None = None, what: str = "--engine ray",
            verbose: bool = False) -> Any:
    """Join ``address`` (``auto``, ``ray://HOST:PORT``, ``HOST:PORT``) or start a private cluster.

    An already initialised Ray (a test session, a notebook) is reused as it is.  Returns ``ray``.
    """
    check_ray(what)
    if not verbose:
        # the C++ core's notes (actor restarts, reconnects) would print past the progress bar
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    imported = sys.modules.get("ray")
    if imported is not None and getattr(imported, "is_initialized", lambda: False)():
        quiet_data(verbose)
        return imported
    kwargs: dict[str, Any] = {"logging_level": logging.INFO if verbose else logging.ERROR,
                              "log_to_driver": verbose, "configure_logging": True}
    from ..trust import TRUST_ENV, untrusted_allowed

    if untrusted_allowed():  # --trust-code holds in the workers too, on a remote cluster as well
        kwargs["runtime_env"] = {"env_vars": {TRUST_ENV: "1"}}
    if address:
        target = resolve_address(address)
        if not target.startswith("ray://"):
            # before ``import ray``: Ray reads RAY_AUTH_MODE once, when it is imported
            check_gcs(target, address, ray_imported=imported is not None)
        kwargs["address"] = target
    else:
        _Private.temp_dir = tempfile.mkdtemp(prefix="cityseg-ray-")
        kwargs.update(address="local", _temp_dir=_Private.temp_dir, include_dashboard=False,
                      num_cpus=num_cpus)
    ray = require_ray(what)
    try:
        with _quiet_fd2(verbose):
            ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        stop_private()
        target = f"--address {address}" if address else "a local Ray cluster"
        raise CitysegError(f"{target}: could not start/join it ({str(exc).splitlines()[0][:160]})"
                           ) from None
    if not address:
        _start_reaper(_Private.temp_dir)
    quiet_data(verbose)
    return ray


# ---- joining -----------------------------------------------------------------------------------
def resolve_address(address: str) -> str:
    """``auto`` → ``RAY_ADDRESS``, else the cluster ``ray start`` recorded on this machine (or an
    error); any other address as given."""
    if address != "auto":
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        found = record.read_text().strip()
    except OSError:
        found = ""
    if not found:
        raise CitysegError("--address auto: no Ray cluster was started on this machine "
                           "('ray start --head' starts one; RAY_ADDRESS names another); "
                           "drop --address for a private one")
    return found


def _token() -> str | None:
    """The Ray auth token this machine holds, where Ray itself looks for it."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _probe(target: str, token: str | None, timeout_s: float = 5.0):
    """The gRPC status of the GCS's ``GetClusterId`` at ``target`` (None when it answered)."""
    import grpc

    channel = grpc.insecure_channel(target)
    try:
        call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId",
                                   request_serializer=None, response_deserializer=None)
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        try:
            call(b"", timeout=timeout_s, metadata=metadata)
            return None
        except grpc.RpcError as exc:
            return exc.code()
    finally:
        channel.close()


def check_gcs(target: str, given: str, *, ray_imported: bool = False) -> None:
    """One fast look at the cluster before ``ray.init``: reachable, and with which auth.

    Sets ``RAY_AUTH_MODE=token`` for this process when the cluster wants a token and accepts the
    one this machine holds; otherwise raises the one error line with the fix.
    """
    import grpc

    code = _probe(target, None)
    if code is None:
        return
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        raise CitysegError(f"--address {given}: no Ray cluster answers at {target} "
                           f"(start one with 'ray start --head --port=PORT', check the host and "
                           f"port, or drop --address for a private local cluster)")
    if code != grpc.StatusCode.UNAUTHENTICATED:
        return  # something else: let ray.init say what
    token = _token()
    mode = os.environ.get("RAY_AUTH_MODE")
    if token is None:
        raise CitysegError(f"--address {given}: the Ray cluster at {target} requires token "
                           f"authentication and this machine has no token: copy the head node's "
                           f"~/.ray/auth_token here (or set RAY_AUTH_TOKEN) and set "
                           f"RAY_AUTH_MODE=token ({AUTH_DOC})")
    if _probe(target, token) is not None:
        raise CitysegError(f"--address {given}: the Ray cluster at {target} rejected this "
                           f"machine's auth token: use the head node's ~/.ray/auth_token "
                           f"(RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH) ({AUTH_DOC})")
    if mode == "token":
        return
    if mode not in (None, "") or ray_imported:
        raise CitysegError(f"--address {given}: the Ray cluster at {target} requires token "
                           f"authentication: set RAY_AUTH_MODE=token (now "
                           f"{mode or 'unset'}); this machine's token is accepted ({AUTH_DOC})")
    os.environ["RAY_AUTH_MODE"] = "token"


# ---- the private cluster -----------------------------------------------------------------------
def _start_reaper(temp_dir: str | None) -> None:
    """The watchdog that ends the private cluster's processes with this process (see .reaper)."""
    if temp_dir is None:
        return
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p))
    _Private.reaper = subprocess.Popen(
        [sys.executable, "-m", "cityseg_deploy.scale.reaper", str(os.getpid()), temp_dir],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env=env)
    atexit.register(stop_private)
    _stop_on_sigterm()


def _stop_on_sigterm() -> None:
    """SIGTERM ends the job like Ctrl-C (cleanup runs); by default it would skip atexit."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        def _term(signum, frame):
            raise KeyboardInterrupt("SIGTERM")

        signal.signal(signal.SIGTERM, _term)


def stop_private(wait_s: float = 15.0) -> None:
    """Shut down the private cluster this process started (no-op otherwise): Ray first, then the
    watchdog sweeps what is left (the agents) and removes the folder; returns when it is done."""
    temp_dir, reaper = _Private.temp_dir, _Private.reaper
    if temp_dir is None:
        return
    _Private.temp_dir = _Private.reaper = None
    try:
        import ray

        if ray.is_initialized():
            with _quiet_fd2(False):
                ray.shutdown()
    except Exception:  # noqa: BLE001 - the watchdog still ends every process
        pass
    if reaper is None:
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)
        return
    try:
        reaper.stdin.close()
        reaper.wait(timeout=wait_s)
    except Exception:  # noqa: BLE001 - it keeps running detached and finishes on its own
        pass


@contextmanager
def _quiet_fd2(verbose: bool) -> Iterator[None]:
    """Ray's C++ core prints to file descriptor 2 while it starts (``logging.cc: Set ray log
    level ...``); keep that out of the terminal unless ``--verbose``."""
    if verbose:
        yield
        return
    from ..native_logs import _captured_fd2

    with _captured_fd2():
        yield


def quiet_data(verbose: bool = False) -> None:
    """Ray's Python loggers quiet (a failed batch is re-raised here as one error line; Ray's own
    report of it is noise), and Ray Data's bars off where something imported it."""
    level = logging.INFO if verbose else logging.CRITICAL
    for name in ("ray", "ray.data", "ray.serve"):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        _mute_error_listener()
    if "ray.data" not in sys.modules:
        return
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False


def _mute_error_listener() -> None:
    """Ray's driver prints every task error the cluster publishes (``(raylet) Task ... failed.
    There are infinite retries remaining ...`` and the remote traceback: ~200 lines for one
    actor that could not start) from a thread of its own, whatever ``log_to_driver`` says.  The
    job re-raises the same error as one line, so those prints are dropped (``--verbose`` keeps
    them); the thread looks the function up at each call, so replacing it is enough."""
    from ray._private import worker

    original = getattr(worker.print_to_stdstream, "__wrapped__", worker.print_to_stdstream)

    def print_to_stdstream(data, *args, **kwargs):
        if data.get("pid") == "raylet":
            return None
        return original(data, *args, **kwargs)

    print_to_stdstream.__wrapped__ = original  # type: ignore[attr-defined]
    worker.print_to_stdstream = print_to_stdstream


def cluster_cpus() -> float:
    """Logical CPUs of the cluster (all nodes together)."""
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


# ---- one bar, one error line ---------------------------------------------------------------------
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


def one_line(exc: BaseException) -> CitysegError:
    """Any failure of a Ray job as one error line: the actor's own message when it raised one,
    else the exception's type and first line (Ray's 200-line remote traceback left out)."""
    user = actor_error(exc)
    if user is not None:
        return user
    cause = exc
    for _ in range(8):  # RayTaskError(...) wraps the actor's exception: name the innermost
        inner = getattr(cause, "cause", None) or cause.__cause__
        if not isinstance(inner, BaseException):
            break
        cause = inner
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()
             and not ln.startswith(("Traceback", "  File", "ray::", "\x1b"))]
    text = lines[-1] if lines else ""
    return CitysegError(f"the Ray job failed: {type(cause).__name__}: {text[:300]} "
                        f"(--verbose shows Ray's own report)")


@contextmanager
def job_progress(total: int, desc: str, enabled: bool, *, unit: str, verbose: bool = False) -> Iterator[Any]:
    """One progress bar over a Ray job; an error an actor raised ends the job as its one line."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)
    try:
        yield bar
    except CitysegError:
        raise
    except Exception as exc:  # Ray wraps actor errors; a user error stays one line
        if verbose:
            user = actor_error(exc)
            if user is not None:
                raise user from None
            raise
        raise one_line(exc) from None
    finally:
        bar.close()
