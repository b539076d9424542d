"""An advisory lock on an output folder (train's run folder, export's target), held while a job
writes there.

Why: a second ``train --resume`` into a folder that was still training was accepted; both
processes then wrote ``last.pt``, ``log.csv`` and the report in turn.  The lock is
``fcntl.flock`` on a small file in the folder: the kernel releases it when the holder exits,
however it exits (SIGKILL included), so a lock never outlives its process.  The file records the
holder's pid, host and command, for the refusal message; a record whose pid is gone while the
lock is still held means a leftover child (a DataLoader worker) inherited it, and the message
says so.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from .errors import CitysegError

LOCK_NAME = ".cityseg.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, what: str, name: str = LOCK_NAME,
                remove: bool = False) -> Iterator[Path]:
    """Hold ``folder/name`` locked for the block; refuse (one CitysegError) when another live
    process holds it.  Not for DDP's other ranks: only the process that writes takes it.

    ``remove``: delete the lock file on release (no hidden file stays beside the run or the
    artifact; a SIGKILLed job leaves it, harmless: the lock itself died with the job); a job that opened it in the instant before is then not
    excluded from one started just after — acceptable for an advisory lock against mistakes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            pid, host = holder.get("pid"), holder.get("host")
            since = holder.get("since")
            who = f"{holder.get('command', 'cityseg')} (pid {pid}"
            who += f" on {host}" if host and host != socket.gethostname() else ""
            who += f", since {time.strftime('%H:%M:%S', time.localtime(since))})" if since else ")"
            if isinstance(pid, int) and host == socket.gethostname() and not _alive(pid):
                who += (f"; pid {pid} has ended but a process it started still holds the lock "
                        "(a leftover worker: end it)")
            raise CitysegError(f"{folder}: another job is writing here — {who}; {what} is refused "
                               f"while it runs: wait for it to end or choose another folder") from None
        os.ftruncate(fd, 0)  # a killed holder's record: its lock died with it
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                  "command": " ".join(["cityseg", *sys.argv[1:3]])[:120]}
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                if remove:
                    path.unlink()
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
