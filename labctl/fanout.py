"""File work of several runs at once: each run's writes end in an ``fsync``, and fsyncs issued
together are committed by the file system's journal together (on ext4 about seven at the cost
of one), where one after the other each waits for the disk. Nothing here touches the database."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: threads writing at once: a tick of an agent's jobs (its slots), a page of released runs
WORKERS = 8

_pool: ThreadPoolExecutor | None = None


def each(fn: Callable[[T], R], items: Sequence[T], catch: tuple[type[Exception], ...]) -> list[R | Exception]:
    """``fn`` of every item, in threads; each result, or the ``catch`` exception it raised, in order.

    Any other exception is raised (after every call has ended, so no write is left half-way)."""
    if len(items) <= 1:
        return [_call(fn, item, catch) for item in items]
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="fanout")
    futures = [_pool.submit(_call, fn, item, catch) for item in items]
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]


def _call(fn: Callable[[T], R], item: T, catch: tuple[type[Exception], ...]) -> R | Exception:
    try:
        return fn(item)
    except catch as exc:
        return exc
