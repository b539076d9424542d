"""The watchdog of a private Ray cluster: when its driver ends (any way, SIGKILL included), every
process the cluster started ends too, and the cluster's temporary folder is removed.

Why a process of its own: Ray starts a local cluster's GCS and raylet with ``PR_SET_PDEATHSIG``
(they die with the driver), but the raylet's own children — ``ray::DashboardAgent``,
``ray::RuntimeEnvAgent`` — have no such tie and were found alive minutes after a driver was
killed; nor does anything remove the session folder (``/tmp/ray`` kept one per command).  A
driver cannot clean up after a SIGKILL, so this small process does: started by the driver with
a pipe on its stdin, it records the cluster's processes (the driver's children that name the
cluster's folder, and their descendants) every half second while the pipe is open; when the
pipe closes (the driver exited, was killed, or is done with the cluster) it sends SIGTERM,
then SIGKILL, to every recorded process still alive (same PID *and* start time, so a reused PID
is never hit) and removes the folder.

Run as ``python -m cityseg_deploy.scale.reaper DRIVER_PID TEMP_DIR``; only the standard library
and psutil (part of the ``scale`` extra).
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import time

POLL_S = 0.5
GRACE_S = 3.0


def cluster_processes(driver: int, temp_dir: str) -> dict[int, float]:
    """{pid: start time} of the cluster's processes: the driver's children whose command line
    names ``temp_dir`` (GCS, raylet, monitors) and all their descendants (agents, workers).

    Never any other child of the driver (a test session's own subprocesses, another cluster).
    """
    import psutil

    try:
        roots = psutil.Process(driver).children(recursive=False)
    except psutil.Error:
        return {}
    found: dict[int, float] = {}
    for root in roots:
        try:
            if temp_dir not in " ".join(root.cmdline()):
                continue
            for proc in [root, *root.children(recursive=True)]:
                found[proc.pid] = proc.create_time()
        except psutil.Error:
            continue
    return found


def sweep(recorded: dict[int, float], grace_s: float = GRACE_S) -> int:
    """SIGTERM, then SIGKILL after ``grace_s``, every recorded process still alive; the count hit."""
    import psutil

    live = []
    for pid, started in recorded.items():
        if pid == os.getpid():
            continue
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - started) < 1e-3:
                live.append(proc)
        except psutil.Error:
            continue
    for proc in live:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(live, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return len(live)


def watch(driver: int, temp_dir: str, stdin_fd: int = 0) -> None:
    """Record the cluster's processes until ``stdin_fd`` reaches EOF; then sweep and clean up."""
    recorded: dict[int, float] = {}
    while True:
        recorded.update(cluster_processes(driver, temp_dir))
        ready, _, _ = select.select([stdin_fd], [], [], POLL_S)
        if ready and not os.read(stdin_fd, 4096):
            break
    recorded.update(cluster_processes(driver, temp_dir))  # a clean exit closes the pipe while the driver lives
    sweep(recorded)
    for _ in range(5):  # a process writing its last log line can race the first attempt
        shutil.rmtree(temp_dir, ignore_errors=True)
        if not os.path.exists(temp_dir):
            break
        time.sleep(0.2)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is the driver's to handle
    watch(int(argv[0]), argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
