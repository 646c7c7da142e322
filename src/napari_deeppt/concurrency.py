"""Bounded read-ahead in threads: tiles and batches are read while the previous ones compute."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["read_ahead"]

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(
    function: Callable[[T], R], items: Iterable[T], workers: int, depth: int
) -> Iterator[R]:
    """``function(item)`` for each item, in order, computed by ``workers`` threads.

    At most ``depth`` results are pending at a time, so memory stays bounded however many
    items there are (``Executor.map`` would submit them all at once).

    Parameters
    ----------
    function
        Called once per item, in a worker thread.
    items
        Iterated lazily, as results are taken.
    workers, depth
        Threads, and results computed ahead of the one being consumed (each at least 1).

    Returns
    -------
    iterator
        The results in ``items``' order; an exception of ``function`` is raised at its item.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) > max(1, depth):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
