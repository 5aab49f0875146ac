"""Just enough HTTP/1.1 for a local page: read one GET request, write one response."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

MAX_HEADERS = 100


class BadRequest(Exception):
    """The request cannot be parsed or its parameters are invalid (400)."""


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on the connection, or None when the client closed it first."""
    line = await reader.readline()
    if not line:
        return None
    try:
        method, target, _version = line.decode("latin-1").split()
    except ValueError as exc:
        raise BadRequest("malformed request line") from exc
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep:
            raise BadRequest("malformed header")
        headers[name.strip().lower()] = value.strip()
    else:
        raise BadRequest("too many headers")
    url = urlsplit(target)
    return Request(method=method.upper(), path=unquote(url.path), query=parse_qs(url.query), headers=headers)


def response(status: HTTPStatus, body: bytes, content_type: str, *, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete response; every connection serves one request and closes."""
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        "Connection: close",
        *(f"{k}: {v}" for k, v in extra),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_response(status: HTTPStatus, body: bytes) -> bytes:
    return response(status, body, "application/json")


def json_error(status: HTTPStatus, message: str) -> bytes:
    return json_response(status, orjson.dumps({"error": message}))


SSE_HEAD = (
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: text/event-stream\r\n"
    "Cache-Control: no-store\r\n"
    "X-Accel-Buffering: no\r\n"
    "Connection: close\r\n\r\n"
).encode("latin-1")


def sse_frame(event: str, event_id: int, data: bytes) -> bytes:
    """One Server-Sent Event; ``data`` is one line of JSON."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, event.encode(), data)
