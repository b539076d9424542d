"""Read the next inputs in a background thread while the model runs the current ones.

Why: ``predict`` and ``eval`` decoded each image, then ran the model on it, one after the other,
so every image cost its decode on top of the model's time.  OpenCV's decoders release the GIL:
one thread a few images ahead hides the decode behind the model.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetched(fn: Callable[[T], R], items: Iterable[T], *, ahead: int) -> Iterator[R]:
    """``fn(item)`` for each item, in order, computed up to ``ahead`` items ahead in one thread.

    Bounded (at most ``ahead`` results wait in memory).  An item's error raises when its turn
    comes, as in the serial loop (the items before it were seen).  Close the generator when
    stopping early (``contextlib.closing``): queued reads are cancelled, the running one is
    waited for, and no thread outlives the loop.  ``ahead <= 0``: no thread, ``map``.
    """
    if ahead <= 0:
        yield from map(fn, items)
        return
    rest = iter(items)
    executor = ThreadPoolExecutor(1, thread_name_prefix="cityseg-read")
    queue: deque[Future] = deque(executor.submit(fn, item) for item in islice(rest, ahead))
    try:
        while queue:
            result = queue.popleft().result()
            queue.extend(executor.submit(fn, item) for item in islice(rest, 1))
            yield result
    finally:
        for future in queue:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)
