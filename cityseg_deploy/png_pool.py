"""A few threads that write output files beside the loop that makes them (``segment
--labels-dir``, ``predict``).

Why: a label PNG costs ~0.5 ms (128x256) to ~4 ms (512x1024) to encode, and written in the loop
it was paid on top of the model's time: ``predict`` ran below the speed of its runner, and
``segment --labels-dir`` below the model's speed on a GPU (58 FPS where the video alone ran 73).
The encoder releases the GIL, so a small pool writes files side by side with the model.

Bounded: at most ``2 * workers`` writes in flight, so a slow disk slows the loop instead of
filling memory with predictions.  The first failed write raises in the caller (at its next
:meth:`PngPool.submit` or at :meth:`PngPool.close`), and writes not yet started are then
dropped: nothing more is written after a failure.  Each write is atomic on its own
(:func:`cityseg_deploy.fileio.write_png`), so whatever stops the run, only complete files are left.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

#: the most writer threads :func:`default_workers` picks (more only contend with the model)
MAX_WORKERS = 4


def default_workers() -> int:
    """Writer threads: one per two CPUs this process may use, 0-4 (0: write in the calling
    thread — on one CPU a thread only adds switches)."""
    from .system.threads import available_cpus  # affinity and cgroup quota, one home

    return min(MAX_WORKERS, available_cpus() // 2)


class PngPool:
    """Run write jobs (``fn(*args)``) in ``workers`` threads, at most ``2 * workers`` in flight.

    ``workers=0`` runs each job in :meth:`submit` itself (same errors, no threads); ``None``:
    :func:`default_workers`.  Use as a context manager: a clean exit waits for every write and
    raises the first error; an exception (Ctrl-C included) stops the pool (:meth:`abort`).
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else max(0, int(workers))
        self._executor = (ThreadPoolExecutor(self.workers, thread_name_prefix="cityseg-png")
                          if self.workers else None)
        self._pending: deque[Future] = deque()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._stopped = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; blocks while ``2 * workers`` are in flight.  An earlier job's
        error raises here."""
        if not self.workers:
            fn(*args)
            return
        if self._executor is None:
            raise RuntimeError("PngPool.submit after close")
        self._raise_error()
        while len(self._pending) >= 2 * self.workers:
            self._pending.popleft().exception()  # waits; its error is kept in self._error
            self._raise_error()
        self._pending.append(self._executor.submit(self._run, fn, args))

    def _run(self, fn: Callable[..., Any], args: tuple) -> None:
        if self._stopped:  # an earlier job failed or the pool was stopped: write nothing more
            return
        try:
            fn(*args)
        except BaseException as exc:  # KeyboardInterrupt too: the caller decides what it means
            with self._lock:
                if self._error is None:
                    self._error = exc
                self._stopped = True
            raise

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._stopped = True
            raise error

    def close(self) -> None:
        """Wait for every job in flight; the first that failed raises here.  Idempotent."""
        try:
            while self._pending:
                self._pending.popleft().exception()
        except BaseException:  # Ctrl-C while waiting: stop instead
            self.abort()
            raise
        self._shut_down(cancel=False)
        self._raise_error()

    def abort(self) -> None:
        """Stop: queued jobs are dropped, running ones finish (each write is atomic); raises
        nothing (the caller's own error is the one to see).  Idempotent."""
        self._stopped = True
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._shut_down(cancel=True)

    def _shut_down(self, *, cancel: bool) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> "PngPool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
