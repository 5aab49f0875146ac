"""Following the log: catch up from a position, then wake on NOTIFY.

A notification is only a wake-up; the follower always reads from the last
position it handed out, and polls every ``poll_interval`` seconds anyway, so
a lost notification (or a dropped connection) only delays, never loses.
The listening connection is autocommit and never sits in a transaction, so
it cannot stall the server's notification queue.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg

from events.codec import StoredEvent
from events.store import CHANNEL, Q, decode_rows, read_all

# The log lives in its own schema, never in public (an original labctl registry may be there).
_OPTIONS = "-c search_path=labctl"


def follow(
    url: str,
    after: int = 0,
    *,
    batch: int = 1000,
    poll_interval: float = 1.0,
    stop: threading.Event | None = None,
    reconnect_delay: float = 0.5,
) -> Iterator[list[StoredEvent]]:
    """Yield pages of events with position > ``after``, forever (until ``stop`` is set)."""
    position = after
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            with psycopg.connect(url, autocommit=True, options=_OPTIONS) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                while not stop.is_set():
                    page = read_all(conn, position, batch)
                    if page:
                        position = page[-1].position
                        yield page
                        continue
                    for _ in conn.notifies(timeout=poll_interval, stop_after=1):
                        pass
        except psycopg.OperationalError:
            # Lost the server: reconnect and catch up from where we were.
            stop.wait(reconnect_delay)


async def aread_all(conn: psycopg.AsyncConnection[Any], after: int = 0, limit: int = 1000) -> list[StoredEvent]:
    cur = await conn.execute(Q["read_all"], {"after": after, "limit": limit})
    return decode_rows(await cur.fetchall())


async def afollow(
    url: str,
    after: int = 0,
    *,
    batch: int = 1000,
    poll_interval: float = 1.0,
    reconnect_delay: float = 0.5,
) -> AsyncIterator[list[StoredEvent]]:
    """The asyncio twin of ``follow``: cancel the consuming task to stop."""
    position = after
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(url, autocommit=True, options=_OPTIONS)
            async with conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                while True:
                    page = await aread_all(conn, position, batch)
                    if page:
                        position = page[-1].position
                        yield page
                        continue
                    async for _ in conn.notifies(timeout=poll_interval, stop_after=1):
                        pass
        except psycopg.OperationalError:
            await asyncio.sleep(reconnect_delay)
