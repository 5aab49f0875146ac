"""Producing the next items in a thread while the caller works on the current one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar, cast

T = TypeVar("T")

_DONE = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def ahead(items: Iterable[T], depth: int = 2, name: str = "labctl-ahead") -> Generator[T, None, None]:
    """``items``, iterated in a thread of their own up to ``depth`` items ahead of the caller.

    For a producer that waits on a server or a consumer that does (the other side keeps working
    meanwhile). An exception in the producer is raised here, in the caller's thread. Closed early
    (the caller stopped iterating, or raised), the producer is stopped at its next item and closed
    in its own thread, and this waits for it: whatever the producer holds (a cursor, a connection)
    is free again when this generator is closed.
    """
    handoff: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the caller's thread
            put(_Failed(exc))
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        put(_DONE)

    producer = threading.Thread(target=produce, name=name, daemon=True)
    producer.start()
    try:
        while (item := handoff.get()) is not _DONE:
            if isinstance(item, _Failed):
                raise item.exc
            yield cast(T, item)
    finally:
        stop.set()
        producer.join()
