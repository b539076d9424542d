"""Run native work that may kill its process (AOTInductor load and compile) in a child process.

Why: ``aoti_load_package`` and ``aoti_compile_and_package`` call C++ that can abort the process
(``terminate called after throwing an instance of 'c10::Error'``, exit 134) or segfault (an fp16
CUDA package at 512x1024, exit 139): no Python handler runs, so the user got a raw crash instead
of one ``error:`` line.  A child process dies in its place; its exit status and the last native
line it printed become a :class:`CitysegError` naming the cause.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .errors import CitysegError

#: The child reports a Python-level failure as one line starting with this, then exits 1.
ERROR_PREFIX = "cityseg-child-error: "
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def _signal_name(returncode: int) -> str | None:
    """``SIGSEGV`` for a child killed by a signal (or a shell-style 128+N status), else None."""
    number = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 160 else None
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def native_message(stderr: str, limit: int = 200) -> str:
    """The line a native crash left that says most: C++'s ``what():``, else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for marker in ("what():", "terminate called", "Error", "error"):
        hits = [line for line in lines if marker in line]
        if hits:
            return hits[-1][:limit]
    return lines[-1][:limit] if lines else ""


def run_python(code: str, args: Sequence[str | os.PathLike], *, what: str,
               timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` with ``args`` (``sys.argv[1:]``) in a fresh Python; return it if it exited 0.

    A death by a signal (or abort) is a CitysegError naming ``what``, the signal and the native
    message; a Python failure the child reported with :data:`ERROR_PREFIX` is one too, with its
    line.  Ctrl-C in the terminal reaches the child as well: that is a KeyboardInterrupt here.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                              text=True, errors="replace", env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CitysegError(f"{what}: no answer after {timeout:.0f} s (the child process was "
                           f"stopped)") from None
    if proc.returncode == 0:
        return proc
    name = _signal_name(proc.returncode)
    if name == "SIGINT":
        raise KeyboardInterrupt
    said = native_message(proc.stderr)
    if name is not None:
        raise CitysegError(f"{what} killed the process that tried it ({name}, exit "
                           f"{proc.returncode})" + (f": {said}" if said else ""))
    reported = [line[len(ERROR_PREFIX):] for line in proc.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    detail = reported[-1][:300] if reported else said
    raise CitysegError(f"{what} failed (exit {proc.returncode})" + (f": {detail}" if detail else ""))


__all__ = ["ERROR_PREFIX", "native_message", "run_python"]
