"""The Starlette application: JSON routes, HTML pages, event streams, and the guards in front of them."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

import psycopg
import psycopg_pool
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import events
from labctl import maintenance
from labctl.db import SEARCH_PATH, connect
from labctl.errors import DatabaseUnavailable
from labctl.eventlog import event_json
from labctl.jsontext import dumps
from labctl.web import api, pages
from labctl.web.stream import Broadcast, SlowReader, StreamLimits, Write, pump_file, pump_log, run_stream

log = logging.getLogger(__name__)
T = TypeVar("T")

STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "labctl_token"
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
]


#: how long a request waits for a pooled connection while the database answers but all are busy
POOL_WAIT = 10.0


class Web:
    """What the handlers share: the connection pool, the log follower, the limits, the token."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        token: str | None = None,
        cluster: dict[str, Any] | None = None,
        limits: StreamLimits | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        self.url = url
        self.token = token
        self.cluster = cluster or {}
        self.limits = limits or StreamLimits()
        self.poll_interval = poll_interval
        options = f"-c search_path={SEARCH_PATH.replace(' ', '')} -c statement_timeout=15000"
        self.pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=POOL_WAIT,
            kwargs={"autocommit": True, "prepare_threshold": None, "options": options},
            check=psycopg_pool.ConnectionPool.check_connection,
            open=False,
            name="labctl-web",
        )
        self.broadcast: Broadcast | None = None
        self.closing = asyncio.Event()
        self.streams = 0
        self._follower: asyncio.Task[None] | None = None
        self._audit: dict[str, Any] | None = None
        self._audit_lock = asyncio.Lock()

    async def start(self) -> None:
        await run_in_threadpool(self.pool.open, True, 10.0)
        position = await self.db(events.last_position)
        self.broadcast = Broadcast(self.url, position, poll_interval=self.poll_interval)
        self._follower = asyncio.create_task(self.broadcast.run())

    def stop_streams(self) -> None:
        self.closing.set()
        if self.broadcast is not None:
            self.broadcast.close()

    async def stop(self) -> None:
        """End every stream, stop following the log and close the pool."""
        self.stop_streams()
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
        await run_in_threadpool(self.pool.close)

    async def db(self, work: Callable[..., T], *args: Any) -> T:
        """``work(conn, *args)`` in a worker thread on a pooled autocommit connection."""

        def call() -> T:
            deadline = time.monotonic() + POOL_WAIT
            errors = self._connect_errors()
            while True:
                # wait in short slices: once the pool fails to connect, the database is away and
                # the answer is a quick 503 with the reason, not a wait for the whole budget
                try:
                    with self.pool.connection(timeout=1.0) as conn:
                        return work(conn, *args)
                except psycopg_pool.PoolTimeout:
                    if self._connect_errors() > errors or time.monotonic() >= deadline:
                        raise self._why_unavailable() from None

        return await run_in_threadpool(call)

    def _connect_errors(self) -> int:
        return int(self.pool.get_stats().get("connections_errors", 0))

    def _why_unavailable(self) -> DatabaseUnavailable:
        """The reason no pooled connection came: the database cannot be reached, else every one is busy."""
        try:
            probe = connect(self.url, budget=0, connect_timeout=2)
        except DatabaseUnavailable as exc:
            return exc
        probe.close()
        return DatabaseUnavailable(f"all {self.pool.max_size} database connections are busy; try again shortly")

    def audit_result(self) -> dict[str, Any] | None:
        return self._audit

    async def run_audit(self) -> None:
        """``audit verify`` (hash chain + rebuild diff), at most one at a time and once per log head."""
        async with self._audit_lock:
            head = await self.db(api.log_head)
            if self._audit is not None and self._audit["position"] == head["position"]:
                return
            report = await self.db(maintenance.audit)
            self._audit = {
                "position": head["position"],
                "clean": report.clean,
                "broken_at": report.broken_at,
                "differences": len(report.differences),
                "events_checked": report.events_checked,
                "checked_at": datetime.now(UTC),
            }


def _web(request: Request) -> Web:
    web: Web = request.app.state.web
    return web


def json_response(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status, media_type="application/json")


def json_error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def _query(request: Request, into: type[T]) -> T:
    return api.decode_query(request.query_params.multi_items(), into)


# ------------------------------------------------------------------ JSON API


async def api_runs(request: Request) -> Response:
    return json_response(await _web(request).db(api.runs_page, _query(request, api.RunsQuery)))


async def api_run(request: Request) -> Response:
    return json_response(await _web(request).db(api.run_detail, request.path_params["id"]))


async def api_run_log(request: Request) -> Response:
    q = _query(request, api.LogQuery)
    return json_response(await _web(request).db(api.run_log, request.path_params["id"], q))


async def api_run_events(request: Request) -> Response:
    page = await _web(request).db(api.run_events, request.path_params["id"])
    return Response(b'{"events":[' + b",".join(event_json(e) for e in page) + b"]}", media_type="application/json")


async def api_recipe(request: Request) -> Response:
    return json_response(await _web(request).db(api.recipe, request.path_params["name"]))


async def api_recipe_history(request: Request) -> Response:
    q = _query(request, api.HistoryQuery)
    return json_response(await _web(request).db(api.recipe_history, request.path_params["name"], q))


async def api_compare(request: Request) -> Response:
    return json_response(await _web(request).db(api.compare, _query(request, api.CompareQuery)))


async def api_pipelines(request: Request) -> Response:
    return json_response(await _web(request).db(api.pipelines, _query(request, api.PipelinesQuery)))


async def api_pipeline(request: Request) -> Response:
    return json_response(await _web(request).db(api.pipeline, request.path_params["id"]))


async def api_sweep(request: Request) -> Response:
    q = _query(request, api.PlotQuery)
    return json_response(await _web(request).db(api.sweep, request.path_params["id"], q))


async def api_artifacts(request: Request) -> Response:
    return json_response(await _web(request).db(api.artifacts, _query(request, api.ArtifactsQuery)))


async def api_artifact(request: Request) -> Response:
    return json_response(await _web(request).db(api.artifact, request.path_params["id"]))


async def api_lineage(request: Request) -> Response:
    return json_response(await _web(request).db(api.lineage, request.path_params["id"]))


async def api_evals(request: Request) -> Response:
    return json_response(await _web(request).db(api.evals, _query(request, api.EvalsQuery)))


async def api_policies(request: Request) -> Response:
    return json_response(await _web(request).db(api.policies))


async def api_policy(request: Request) -> Response:
    return json_response(await _web(request).db(api.policy, request.path_params["name"]))


async def api_cluster(request: Request) -> Response:
    web = _web(request)
    body = await web.db(api.cluster, web.cluster)
    body["open_streams"] = web.streams
    return json_response(body)


async def api_events(request: Request) -> Response:
    body = await _web(request).db(api.events_json, _query(request, api.EventsQuery))
    return Response(body, media_type="application/json")


# ------------------------------------------------------------- event streams


def resume_position(headers: Headers, query: dict[str, str]) -> int | None:
    raw = headers.get("last-event-id") or query.get("after")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise api.BadRequest(f"Last-Event-ID / after must be an event position, not {raw[:40]!r}")
    return int(raw)


class _Stream:
    """An SSE endpoint (a raw ASGI app: it writes each frame itself, with a timeout)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        web = _web(request)
        if web.streams >= web.limits.max_subscribers:
            await json_error(503, f"too many open event streams ({web.streams}); try again later")(scope, receive, send)
            return
        try:
            await self.open(request, web, send, receive)
        except (api.BadRequest, api.NotFound) as exc:
            status = 400 if isinstance(exc, api.BadRequest) else 404
            await json_error(status, str(exc))(scope, receive, send)

    async def open(self, request: Request, web: Web, send: Send, receive: Receive) -> None:
        raise NotImplementedError


class LogStream(_Stream):
    """``/api/stream``: every event after Last-Event-ID (else ``?after=``, else the log's end), then live."""

    async def open(self, request: Request, web: Web, send: Send, receive: Receive) -> None:
        resume = resume_position(request.headers, dict(request.query_params))
        assert web.broadcast is not None
        queue = web.broadcast.subscribe()  # subscribed before reading the end: nothing committed later is missed
        web.streams += 1
        try:
            position = await web.db(events.last_position) if resume is None else resume

            async def read_page(after: int, limit: int) -> list[events.StoredEvent]:
                return await web.db(events.read_all, after, limit)

            async def pump(write: Write) -> None:
                await pump_log(
                    write,
                    queue,
                    position,
                    catch_up=resume is not None,
                    read_page=read_page,
                    keepalive=web.limits.keepalive,
                )

            await run_stream(send, receive, pump, web.limits)
        finally:
            web.streams -= 1
            web.broadcast.unsubscribe(queue)


class RunLogStream(_Stream):
    """``/api/runs/{id}/log/stream``: the run's log.txt as it grows (``event: lines``), from Last-Event-ID."""

    async def open(self, request: Request, web: Web, send: Send, receive: Receive) -> None:
        resume = resume_position(request.headers, dict(request.query_params))
        detail = await web.db(api.run_log, request.path_params["id"], api.LogQuery(tail=1))
        path = Path(detail["path"])
        web.streams += 1
        try:

            async def pump(write: Write) -> None:
                await pump_file(write, path, detail["size"] if resume is None else resume, stop=web.closing)

            await run_stream(send, receive, pump, web.limits)
        finally:
            web.streams -= 1


# ------------------------------------------------------------------- guards


def _is_api(path: str) -> bool:
    return path.startswith("/api/")


def host_name(header: str) -> str:
    """The name in a Host header, without its port (``[::1]:8765`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.partition(":")[0]


class Guard:
    """The Host header names this server (DNS rebinding), GET only, the token when one is set,
    and safe headers on every response."""

    def __init__(self, app: ASGIApp, token: str | None, allowed_hosts: list[str]) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = {h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = host_name(Headers(scope=scope).get("host", ""))
        if host not in self.allowed_hosts:
            await json_error(400, f"this server does not answer to the host name {host[:80]!r}")(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            response = json_error(405, f"{scope['method']} is not supported; this server is read-only (GET)")
            response.headers["allow"] = "GET, HEAD"
            await response(scope, receive, send)
            return
        if self.token is not None:
            presented, from_query = self._presented(scope)
            if presented is None or not hmac.compare_digest(presented.encode(), self.token.encode()):
                await json_error(401, "a token is required: open the URL that `labctl serve` printed")(
                    scope, receive, send
                )
                return
            if from_query:
                await self._set_cookie_and_clean_url(scope, receive, send)
                return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)

    @staticmethod
    def _presented(scope: Scope) -> tuple[str | None, bool]:
        headers = Headers(scope=scope)
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), False
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == TOKEN_COOKIE:
                return value, False
        for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
            if name == "token":
                return value, True
        return None, False

    @staticmethod
    async def _set_cookie_and_clean_url(scope: Scope, receive: Receive, send: Send) -> None:
        """``?token=`` once: remember it in a cookie and drop it from the address bar."""
        params = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1")) if k != "token"]
        token = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))["token"]
        target = scope["path"] + (f"?{urlencode(params)}" if params else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
        await response(scope, receive, send)


class Bound:
    """At most ``limit`` requests in flight (event streams included); one more is a 503 that says so,
    JSON under /api/ and a page elsewhere (uvicorn's own cap, further out, would answer in plain text)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            message = f"the server is busy ({self.in_flight} requests in flight); try again shortly"
            response = json_error(503, message) if _is_api(scope["path"]) else pages.error_page(503, message)
            response.headers["retry-after"] = "1"
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


# ------------------------------------------------------------------ errors


async def _bad_request(request: Request, exc: Exception) -> Response:
    return _error(request, 400, str(exc))


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(request, 404, str(exc))


async def _unavailable(request: Request, exc: Exception) -> Response:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _error(request, 503, f"database unavailable: {first}")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "no such page: " + request.url.path if exc.status_code == 404 else str(exc.detail)
    return _error(request, exc.status_code, message)


async def _internal(request: Request, exc: Exception) -> Response:
    if isinstance(exc, SlowReader):
        return Response(status_code=500)  # never sent: the response had started; uvicorn drops the connection
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(request, 500, "internal error (see the server's log)")


def _error(request: Request, status: int, message: str) -> Response:
    if _is_api(request.url.path):
        return json_error(status, message)
    return pages.error_page(status, message)


# -------------------------------------------------------------------- the app


def create_app(web: Web, *, allowed_hosts: list[str], max_requests: int = 256) -> Starlette:
    routes = [
        Route("/api/runs", api_runs),
        Route("/api/runs/{id}", api_run),
        Route("/api/runs/{id}/log", api_run_log),
        Route("/api/runs/{id}/log/stream", RunLogStream()),
        Route("/api/runs/{id}/events", api_run_events),
        Route("/api/recipes/{name}", api_recipe),
        Route("/api/recipes/{name}/history", api_recipe_history),
        Route("/api/compare", api_compare),
        Route("/api/pipelines", api_pipelines),
        Route("/api/pipelines/{id}", api_pipeline),
        Route("/api/sweeps/{id}", api_sweep),
        Route("/api/artifacts", api_artifacts),
        Route("/api/artifacts/{id:path}/lineage", api_lineage),
        Route("/api/artifacts/{id:path}", api_artifact),
        Route("/api/evals", api_evals),
        Route("/api/policies", api_policies),
        Route("/api/policies/{name}", api_policy),
        Route("/api/cluster", api_cluster),
        Route("/api/events", api_events),
        Route("/api/stream", LogStream()),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        *pages.routes(),
    ]
    handlers: dict[Any, Callable[..., Any]] = {
        api.BadRequest: _bad_request,
        api.NotFound: _not_found,
        DatabaseUnavailable: _unavailable,
        psycopg.OperationalError: _unavailable,
        HTTPException: _http_error,
        Exception: _internal,
    }
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(Guard, token=web.token, allowed_hosts=allowed_hosts),
            Middleware(Bound, limit=max_requests),
        ],
        exception_handlers=handlers,
    )
    app.state.web = web
    return app
