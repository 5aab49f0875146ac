"""One LISTEN follower for the whole server, fanned out to every open event stream.

A subscriber that falls too far behind is dropped (its queue gets ``None``):
the browser reconnects with ``Last-Event-ID`` and catches up from the log,
so a slow page costs a reconnect, never a gap.
"""

from __future__ import annotations

import asyncio
import logging

from events import StoredEvent
from events.follow import afollow

log = logging.getLogger(__name__)

Page = list[StoredEvent] | None


class Broadcast:
    """Follows the log from ``position`` and hands each new page to every subscriber."""

    def __init__(self, url: str, position: int, *, queue_pages: int = 256, poll_interval: float = 1.0) -> None:
        self.url = url
        self.position = position
        self.queue_pages = queue_pages
        self.poll_interval = poll_interval
        self._subscribers: set[asyncio.Queue[Page]] = set()

    def subscribe(self) -> asyncio.Queue[Page]:
        """A queue of every page after ``self.position`` as it is now."""
        queue: asyncio.Queue[Page] = asyncio.Queue(self.queue_pages)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Page]) -> None:
        self._subscribers.discard(queue)

    async def run(self) -> None:
        """Follow forever (cancel to stop); an unexpected error is logged and the follower restarts."""
        while True:
            try:
                async for page in afollow(self.url, self.position, poll_interval=self.poll_interval):
                    self.position = page[-1].position
                    self._publish(page)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event follower failed; restarting from position %d", self.position)
                await asyncio.sleep(1.0)

    def _publish(self, page: list[StoredEvent]) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(page)
            except asyncio.QueueFull:
                self._subscribers.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)
