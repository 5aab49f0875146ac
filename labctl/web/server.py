"""The HTTP server: routes, the event stream, and starting and stopping cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from typing import Any, TypeVar

import psycopg

import events
from labctl.db import is_transient
from labctl.errors import DatabaseUnavailable, InputError, UserError
from labctl.eventlog import event_json
from labctl.web import api
from labctl.web.http import (
    SSE_HEAD,
    BadRequest,
    Request,
    json_error,
    json_response,
    read_request,
    response,
    sse_frame,
)
from labctl.web.pool import ConnectionPool
from labctl.web.stream import Broadcast

log = logging.getLogger(__name__)

T = TypeVar("T")

CATCH_UP_PAGE = 1000
REQUEST_TIMEOUT = 10.0


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a host and a port."""
    host, sep, port = bind.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"--bind {bind!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    return host, int(port)


class WebServer:
    """What the handlers share: the page, the connection pool, the log follower and the open connections."""

    def __init__(self, url: str, *, pool_size: int = 4, keepalive: float = 15.0) -> None:
        self.url = url
        self.pool = ConnectionPool(url, pool_size)
        self.page = resources.files("labctl.web").joinpath("page.html").read_bytes()
        self.keepalive = keepalive
        self.broadcast: Broadcast | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def db(self, work: Callable[..., T], *args: Any) -> T:
        """``work(conn, *args)`` in a worker thread; a stale pooled connection is replaced once."""

        def call() -> T:
            for attempt in range(2):
                try:
                    with self.pool.connection() as conn:
                        return work(conn, *args)
                except psycopg.Error as exc:
                    if attempt or not is_transient(exc):
                        raise
            raise AssertionError("unreachable")  # pragma: no cover

        return await asyncio.to_thread(call)

    # ------------------------------------------------------------ connections

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                request = await read_request(reader)
            if request is None:
                return
            if request.method == "GET" and request.path == "/api/stream":
                await self.stream(request, writer)
            else:
                writer.write(await self.respond(request))
                await writer.drain()
        except BadRequest as exc:
            writer.write(json_error(HTTPStatus.BAD_REQUEST, str(exc)))
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away or never finished its request
        except (DatabaseUnavailable, psycopg.OperationalError) as exc:
            log.warning("event stream closed: %s", exc)  # the browser reconnects and resumes
        except Exception:
            log.exception("connection failed")
        except asyncio.CancelledError:
            # Only shutdown cancels a connection; ending quietly keeps 3.11's start_server from logging it.
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def respond(self, request: Request) -> bytes:
        """The whole response to a plain (non-streaming) request."""
        try:
            return await self.route(request)
        except BadRequest as exc:
            return json_error(HTTPStatus.BAD_REQUEST, str(exc))
        except (DatabaseUnavailable, psycopg.OperationalError) as exc:
            return json_error(HTTPStatus.SERVICE_UNAVAILABLE, f"database unavailable: {exc}")
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return json_error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the server's log)")

    async def route(self, request: Request) -> bytes:
        if request.method != "GET":
            return json_error(HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} is not supported; use GET")
        path = request.path
        if path == "/":
            return response(HTTPStatus.OK, self.page, "text/html; charset=utf-8")
        if path == "/api/runs":
            return json_response(HTTPStatus.OK, await self.db(api.runs_json, api.decode_query(request, api.RunsQuery)))
        if path.startswith("/api/runs/"):
            try:
                return json_response(HTTPStatus.OK, await self.db(api.run_json, path.removeprefix("/api/runs/")))
            except DatabaseUnavailable:
                raise
            except UserError as exc:
                return json_error(HTTPStatus.NOT_FOUND, str(exc))
        if path == "/api/pipelines":
            pipelines = api.decode_query(request, api.PipelinesQuery)
            return json_response(HTTPStatus.OK, await self.db(api.pipelines_json, pipelines))
        if path == "/api/events":
            wanted = api.decode_query(request, api.EventsQuery)
            return json_response(HTTPStatus.OK, await self.db(api.events_json, wanted))
        return json_error(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")

    # ------------------------------------------------------------ event stream

    async def stream(self, request: Request, writer: asyncio.StreamWriter) -> None:
        """Server-Sent Events: every event after ``Last-Event-ID`` (else ``?after=``, else the log's end), live."""
        assert self.broadcast is not None
        resume = resume_position(request)
        queue = self.broadcast.subscribe()
        try:
            # Subscribed first, so whatever commits after this read reaches the queue (the follower may lag).
            position = await self.db(events.last_position) if resume is None else resume
            writer.write(SSE_HEAD + b"retry: 1000\n\n")
            await writer.drain()
            if resume is not None:
                position = await self.catch_up(writer, position)
            while True:
                try:
                    async with asyncio.timeout(self.keepalive):
                        page = await queue.get()
                except TimeoutError:
                    writer.write(b": keepalive\n\n")
                    await writer.drain()
                    continue
                if page is None:
                    return  # fell behind: the browser reconnects with Last-Event-ID and catches up
                fresh = [e for e in page if e.position > position]
                if fresh:
                    writer.write(b"".join(sse_frame("log", e.position, event_json(e)) for e in fresh))
                    position = fresh[-1].position
                    await writer.drain()
        finally:
            self.broadcast.unsubscribe(queue)

    async def catch_up(self, writer: asyncio.StreamWriter, position: int) -> int:
        """Send the events after ``position`` from the log; the broadcast covers everything later."""
        while True:
            page = await self.db(events.read_all, position, CATCH_UP_PAGE)
            if page:
                writer.write(b"".join(sse_frame("log", e.position, event_json(e)) for e in page))
                position = page[-1].position
                await writer.drain()
            if len(page) < CATCH_UP_PAGE:
                return position

    # ------------------------------------------------------------ lifecycle

    async def close_connections(self) -> None:
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)


def resume_position(request: Request) -> int | None:
    raw = request.headers.get("last-event-id") or request.param("after")
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequest(f"Last-Event-ID / after must be an event position, not {raw!r}")
    return int(raw)


async def serve(
    url: str,
    host: str,
    port: int,
    *,
    stop: asyncio.Event,
    started: Callable[[str, int], None] | None = None,
    poll_interval: float = 1.0,
) -> None:
    """Serve until ``stop`` is set, then close every connection and the follower."""
    web = WebServer(url)
    try:
        position = await web.db(events.last_position)
        web.broadcast = Broadcast(url, position, poll_interval=poll_interval)
        follower = asyncio.create_task(web.broadcast.run())
        try:
            tcp = await asyncio.start_server(web.handle, host, port)
        except BaseException:
            follower.cancel()
            raise
        try:
            bound = tcp.sockets[0].getsockname()
            if started is not None:
                started(str(bound[0]), int(bound[1]))
            await stop.wait()
        finally:
            tcp.close()
            follower.cancel()
            await web.close_connections()
            await asyncio.gather(follower, return_exceptions=True)
            await tcp.wait_closed()
    finally:
        web.pool.close()


def run_server(url: str, host: str, port: int, *, started: Callable[[str, int], None] | None = None) -> None:
    """Serve in the foreground until SIGINT or SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await serve(url, host, port, stop=stop, started=started)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
