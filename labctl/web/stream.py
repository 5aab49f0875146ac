"""Server-Sent Events: one LISTEN follower for the whole server, fanned out to every open stream.

Every stream is bounded: at most ``max_subscribers`` of them, a small queue of
pages each, catch-up read a page at a time, an event larger than
``MAX_EVENT_BYTES`` sent as a stub, and a client that does not take a frame
within ``write_timeout`` seconds is closed. A closed or dropped client
reconnects with ``Last-Event-ID`` and catches up from the log, so being slow
costs a reconnect, never a gap or a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
from starlette.types import Receive, Send

from events import StoredEvent
from events.follow import afollow
from labctl.eventlog import event_json

log = logging.getLogger(__name__)

Frame = tuple[int, bytes]  # an event's position and its SSE frame, encoded once for every subscriber
Page = list[Frame] | None
Write = Callable[[bytes], Awaitable[None]]

CATCH_UP_PAGE = 32  # events read per catch-up query: what a client that stops reading can pin
MAX_EVENT_BYTES = 64 * 1024
WRITE_CHUNK = 64 * 1024  # frames are written in chunks of about this size, each waiting for the client
SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
    (b"x-content-type-options", b"nosniff"),
]


class Broadcast:
    """Follows the log from ``position`` and hands each new page to every subscriber."""

    def __init__(self, url: str, position: int, *, queue_pages: int = 64, poll_interval: float = 1.0) -> None:
        self.url = url
        self.position = position
        self.queue_pages = queue_pages
        self.poll_interval = poll_interval
        self.subscribers: set[asyncio.Queue[Page]] = set()

    def subscribe(self) -> asyncio.Queue[Page]:
        """A queue of every page after ``self.position`` as it is now."""
        queue: asyncio.Queue[Page] = asyncio.Queue(self.queue_pages)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Page]) -> None:
        self.subscribers.discard(queue)

    async def run(self) -> None:
        """Follow forever (cancel to stop); an unexpected error is logged and the follower restarts."""
        while True:
            try:
                async for page in afollow(self.url, self.position, poll_interval=self.poll_interval):
                    self.position = page[-1].position
                    if self.subscribers:
                        self.publish(frames(page))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event follower failed; restarting from position %d", self.position)
                await asyncio.sleep(1.0)

    def publish(self, page: Page) -> None:
        """Hand ``page`` to every subscriber; one whose queue is full is dropped (it reconnects and catches up)."""
        for queue in list(self.subscribers):
            try:
                queue.put_nowait(page)
            except asyncio.QueueFull:
                self.subscribers.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)

    def close(self) -> None:
        """End every stream (shutdown): each gets ``None``."""
        self.publish(None)


def frames(page: list[StoredEvent]) -> list[Frame]:
    return [(e.position, sse_frame(e)) for e in page]


async def write_frames(write: Write, page: list[Frame]) -> None:
    """Frames in chunks of about ``WRITE_CHUNK`` bytes, each sent (or timed out) before the next is built."""
    chunk: list[bytes] = []
    size = 0
    for _, frame in page:
        chunk.append(frame)
        size += len(frame)
        if size >= WRITE_CHUNK:
            await write(b"".join(chunk))
            chunk, size = [], 0
    if chunk:
        await write(b"".join(chunk))


async def write_events(write: Write, page: list[StoredEvent]) -> None:
    """Like ``write_frames``, encoding each event as it goes and letting go of it once sent (``page`` empties)."""
    page.reverse()
    chunk: list[bytes] = []
    size = 0
    while page:
        frame = sse_frame(page.pop())
        chunk.append(frame)
        size += len(frame)
        if size >= WRITE_CHUNK or not page:
            await write(b"".join(chunk))
            chunk, size = [], 0


def sse_frame(e: StoredEvent) -> bytes:
    """One ``event: log`` frame; an oversized event becomes a stub the page can fetch in full."""
    data = event_json(e)
    if len(data) > MAX_EVENT_BYTES:
        data = orjson.dumps(
            {
                "position": e.position,
                "stream": e.stream,
                "version": e.version,
                "type": e.type,
                "recorded_at": e.recorded_at.isoformat(),
                "truncated": True,
                "bytes": len(data),
            }
        )
    return b"id: %d\nevent: log\ndata: %s\n\n" % (e.position, data)


class StreamLimits:
    def __init__(self, *, max_subscribers: int = 128, write_timeout: float = 10.0, keepalive: float = 15.0) -> None:
        self.max_subscribers = max_subscribers
        self.write_timeout = write_timeout
        self.keepalive = keepalive


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def run_stream(
    send: Send,
    receive: Receive,
    pump: Callable[[Write], Coroutine[Any, Any, None]],
    limits: StreamLimits,
) -> None:
    """Start an SSE response and run ``pump(write)`` until it ends, the client leaves or stops reading."""

    async def write(chunk: bytes) -> None:
        try:
            async with asyncio.timeout(limits.write_timeout):
                await send({"type": "http.response.body", "body": chunk, "more_body": chunk != b""})
        except TimeoutError as exc:
            raise SlowReader("closed an event stream whose client stopped reading") from exc

    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    await write(b"retry: 1000\n\n")
    producer = asyncio.create_task(pump(write))
    watcher = asyncio.create_task(_until_disconnect(receive))
    try:
        done, _ = await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (producer, watcher):
            task.cancel()
        await asyncio.gather(producer, watcher, return_exceptions=True)
    if watcher in done:
        return  # the client left
    exc = producer.exception()
    if isinstance(exc, SlowReader):
        raise exc
    if exc is not None:
        log.warning("event stream ended: %s", exc)
    await write(b"")  # the end of the response (a slow reader here is cut off the same way)


class SlowReader(Exception):
    """A stream's client did not take a frame in time: the connection is dropped (uvicorn closes it)."""


class QuietSlowReaders(logging.Filter):
    """uvicorn logs an exception that ends a started response; a slow reader is routine, so one info line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], SlowReader):
            log.info("%s", record.exc_info[1])
            return False
        return True


async def pump_log(
    write: Write,
    queue: asyncio.Queue[Page],
    position: int,
    *,
    catch_up: bool,
    read_page: Callable[[int, int], Awaitable[list[StoredEvent]]],
    keepalive: float,
) -> None:
    """Every event after ``position``: first from the log (a page at a time), then live from ``queue``."""
    if catch_up:
        while True:
            page = await read_page(position, CATCH_UP_PAGE)
            count = len(page)
            if page:
                position = page[-1].position
                await write_events(write, page)
            if count < CATCH_UP_PAGE:
                break
    while True:
        try:
            async with asyncio.timeout(keepalive):
                live = await queue.get()
        except TimeoutError:
            await write(b": keepalive\n\n")
            continue
        if live is None:
            return  # dropped or shutting down: the browser reconnects with Last-Event-ID
        fresh = [f for f in live if f[0] > position]  # the catch-up may have sent some already
        if fresh:
            await write_frames(write, fresh)
            position = fresh[-1][0]


async def pump_file(
    write: Write,
    path: Path,
    offset: int,
    *,
    stop: asyncio.Event,
    interval: float = 0.5,
    chunk: int = 64 * 1024,
) -> None:
    """A growing text file from ``offset``, as ``event: lines`` frames (id: = byte offset), until ``stop``."""
    pending = b""
    idle = 0.0
    while not stop.is_set():
        data = await asyncio.to_thread(_read_from, path, offset, chunk)
        if data:
            offset += len(data)
            pending += data
            complete, _, pending = pending.rpartition(b"\n")
            if complete:
                text = complete.decode("utf-8", "replace")
                await write(
                    b"id: %d\nevent: lines\ndata: %s\n\n" % (offset - len(pending), orjson.dumps(text.split("\n")))
                )
            idle = 0.0
            continue
        idle += interval
        if idle >= 15.0:
            await write(b": keepalive\n\n")
            idle = 0.0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stop.wait()


def _read_from(path: Path, offset: int, size: int) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(size)
    except OSError:
        return b""
