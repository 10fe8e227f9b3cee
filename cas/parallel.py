"""Bounded parallel maps: results in input order with at most a window of calls in flight, so the memory
a long map needs is set by the window, not by how many items it maps (ThreadPoolExecutor.map submits
every item at once and holds every finished result until it is consumed)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, name: str = "cas-map",
                window: int | None = None) -> Iterator[R]:
    """fn over items on `workers` threads (in this thread when 1), yielding results in order; at most
    `window` (default: workers) calls run or wait to be consumed at any time."""
    if workers <= 1:
        yield from map(fn, items)
        return
    limit = max(1, window or workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
