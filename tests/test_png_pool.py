"""The writer pool (png_pool.PngPool) and the read-ahead (prefetch.prefetched) that predict,
eval and segment --labels-dir run on: bounded, in order, errors in the caller, clean stops."""
from __future__ import annotations

import threading
import time
from contextlib import closing

import pytest

from cityseg_deploy.system import threads
from cityseg_deploy.png_pool import PngPool, default_workers
from cityseg_deploy.prefetch import prefetched


def _threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def test_default_workers_is_one_per_two_cpus_at_most_four(monkeypatch):
    for cpus, workers in [(1, 0), (2, 1), (5, 2), (8, 4), (64, 4)]:  # CPUs this process may use
        monkeypatch.setattr(threads, "_affinity", lambda n=cpus: set(range(n)))
        monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
        assert default_workers() == workers
        assert PngPool().workers == workers


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_every_job_runs_and_close_waits_for_them(workers):
    done = []
    with PngPool(workers) as pool:
        for k in range(20):
            pool.submit(lambda k: (time.sleep(0.001), done.append(k)), k)
    assert sorted(done) == list(range(20))
    assert not _threads("cityseg-png")


def test_at_most_two_jobs_per_worker_in_flight():
    gate, started = threading.Event(), []
    pool = PngPool(2)
    submitted = []

    def producer():
        for k in range(10):
            pool.submit(lambda k: (started.append(k), gate.wait()), k)
            submitted.append(k)

    t = threading.Thread(target=producer)
    t.start()
    time.sleep(0.2)
    assert len(submitted) == 4 and len(started) == 2  # the 5th submit waits for a free slot
    gate.set()
    t.join()
    pool.close()
    assert sorted(started) == list(range(10))


def test_first_error_raises_in_the_caller_and_later_jobs_do_not_run():
    ran = []

    def job(k):
        if k == 2:
            raise OSError(f"disk failed at {k}")
        if k > 2:
            time.sleep(0.01)
        ran.append(k)

    pool = PngPool(1)
    with pytest.raises(OSError, match="disk failed at 2"):
        for k in range(50):
            pool.submit(job, k)
        pool.close()
    pool.abort()
    assert ran[:2] == [0, 1] and len(ran) < 10
    assert not _threads("cityseg-png")


def test_jobs_queued_behind_a_failed_one_write_nothing():
    """After a failed write nothing more is written, even what was already queued."""
    gate, ran = threading.Event(), []
    pool = PngPool(1)
    pool.submit(lambda: (gate.wait(), 1 / 0))
    pool.submit(lambda: ran.append("after"))
    gate.set()
    time.sleep(0.1)  # both have had their turn in the worker
    with pytest.raises(ZeroDivisionError):
        pool.close()
    assert ran == []


def test_error_of_the_last_job_raises_at_close():
    pool = PngPool(2)
    pool.submit(lambda: None)
    pool.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        pool.close()
    pool.close()  # idempotent: the error was raised once


def test_an_error_in_the_loop_stops_the_pool_and_drops_queued_jobs():
    """Ctrl-C (or any error) in the caller: running jobs finish, queued ones never start."""
    gate, ran = threading.Event(), []
    with pytest.raises(KeyboardInterrupt):
        with PngPool(1) as pool:
            pool.submit(lambda: (gate.wait(), ran.append("running")))
            pool.submit(lambda: ran.append("queued"))
            threading.Timer(0.1, gate.set).start()
            raise KeyboardInterrupt
    assert ran == ["running"]
    assert not _threads("cityseg-png")


def test_prefetched_is_in_order_and_bounded():
    seen = []

    def read(k):
        seen.append(k)
        return k * 10

    with closing(prefetched(read, range(20), ahead=3)) as items:
        assert next(items) == 0
        time.sleep(0.05)
        assert max(seen) <= 3  # the one handed out and at most 3 ahead
        assert list(items) == [k * 10 for k in range(1, 20)]


def test_prefetched_error_raises_at_its_turn():
    def read(k):
        if k == 4:
            raise ValueError("corrupt image 4")
        return k

    got = []
    with pytest.raises(ValueError, match="corrupt image 4"):
        for value in prefetched(read, range(10), ahead=2):
            got.append(value)
    assert got == [0, 1, 2, 3]
    assert not _threads("cityseg-read")


def test_closing_prefetched_early_stops_its_thread():
    seen = []
    items = prefetched(lambda k: seen.append(k) or k, range(1000), ahead=4)
    with closing(items):
        assert next(items) == 0
    time.sleep(0.05)
    assert len(seen) <= 6 and not _threads("cityseg-read")
