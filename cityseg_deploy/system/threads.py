"""CPU thread settings in one place: how many CPUs this process may use, torch's pools set and
restored, OpenMP told to yield.

Why: torch's thread count was set in four places (bench, two runners, quickstart) and restored in
one, so a ``--threads 1`` in one step leaked into the next; the default came from
``os.cpu_count()``, which counts the host's CPUs, not the ones a container or ``taskset`` grants
(64 onnxruntime threads on a 2-CPU quota).  And on a shared machine an OpenMP pool that spins
after each parallel region takes CPU from onnxruntime's or OpenVINO's own pool in the same process.

Imports nothing heavy: torch is imported only by the functions that set its pools.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (v2 ``cpu.max``, v1 ``cfs_quota_us /
    cfs_period_us``), or None when there is none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max" and float(period) > 0:
            return float(quota) / float(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = float((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def _physical_cores(cpus: set[int]) -> int:
    """Distinct (package, core) pairs among ``cpus``, from /proc/cpuinfo; ``len(cpus)`` if unread."""
    cores, cpu, package = set(), None, "0"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "processor":
                cpu = int(value)
            elif key == "physical id":
                package = value
            elif key == "core id" and cpu in cpus:
                cores.add((package, value))
    except (OSError, ValueError):
        return len(cpus)
    return len(cores) or len(cpus)


def available_cpus() -> int:
    """Logical CPUs this process may run on: its affinity mask, capped by the cgroup quota."""
    count = len(_affinity()) or 1
    limit = cgroup_cpu_limit()
    return max(1, min(count, math.ceil(limit))) if limit else count


def default_threads() -> int:
    """Threads a runner uses when none are asked for: one per physical core this process may use
    (what torch and onnxruntime pick on a bare machine), never more than :func:`available_cpus`."""
    return max(1, min(_physical_cores(_affinity()), available_cpus()))


def yield_when_idle() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless set: OpenMP threads sleep instead of spinning between
    parallel regions, so they do not steal CPU from another pool.  Must run before torch (its
    OpenMP runtime) is imported: the CLI entry calls it first.

    The price: on a quiet box a small network pays each worker's wake-up (torch eager at 128x256
    18.4 ms vs 13.2 spinning; loaded 25.5 vs 35; bench/results/omp_spin_ab_quiet.md).  libgomp
    reads its spin count once, so spinning cannot be chosen per moment; ``GOMP_SPINCOUNT`` in the
    environment still applies for a user whose box is their own."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def spinning_allowed() -> bool:
    """Whether a thread pool may spin between parallel regions: not under
    ``OMP_WAIT_POLICY=PASSIVE`` (the CLI's default, :func:`yield_when_idle`).  Why a function
    other pools ask: onnxruntime's intra-op pool spins by default whatever OpenMP does — on 2 CPUs
    with two busy processes its int8 DeepLabV3-small frame took 147 ms instead of 52
    (bench/results/shared_load_h25_only.md); it now follows the same policy."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() != "PASSIVE"


class TorchThreads:
    """Holds torch's intra-op thread count at ``n`` until :meth:`restore` (a runner's lifetime).

    ``n`` None changes nothing.  The previous count is put back on restore, so one runner's
    ``--threads`` does not leak into the next command step.
    """

    def __init__(self, n: int | None):
        self.previous: int | None = None
        if n:
            import torch

            self.previous = torch.get_num_threads()
            torch.set_num_threads(int(n))

    def restore(self) -> None:
        if self.previous is not None:
            import torch

            torch.set_num_threads(self.previous)
            self.previous = None


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """``with torch_threads(4):`` torch runs on 4 intra-op threads inside the block, as before after it."""
    hold = TorchThreads(n)
    try:
        yield
    finally:
        hold.restore()


def quiet_torch() -> TorchThreads:
    """torch at one thread while another library's pool (onnxruntime, OpenVINO) does the work in
    this process, so the two pools do not both run at full width; restore when done."""
    return TorchThreads(1)


__all__ = ["TorchThreads", "available_cpus", "cgroup_cpu_limit", "default_threads", "quiet_torch",
           "spinning_allowed",
           "torch_threads", "yield_when_idle"]
