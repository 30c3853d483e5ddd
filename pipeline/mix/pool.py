"""An ordered, bounded process map: results in input order, at most ``2 * workers`` tasks in flight.

``multiprocessing.Pool.imap`` reads its whole input ahead of the workers; a mix over 6 GB of
records must not, so tasks are submitted only as results are taken.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["ordered_map", "worker_count"]


def worker_count(requested: int) -> int:
    return requested or os.cpu_count() or 1


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[tuple[Any, Any]]:
    """Yield ``(item, fn(item))`` in input order; ``workers`` <= 1 runs in this process."""
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append((item, pool.apply_async(fn, (item,))))
            while len(pending) >= 2 * workers:
                it, fut = pending.popleft()
                yield it, fut.get()
        while pending:
            it, fut = pending.popleft()
            yield it, fut.get()
