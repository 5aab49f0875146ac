"""The JSON endpoints: the CLI's own queries, answered as JSON bytes.

Each function takes an autocommit connection and typed parameters (decoded
once from the query string) and returns the response body.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec
import psycopg

import events
from events.queries import load_queries
from labctl import runs
from labctl.eventlog import event_json
from labctl.web.http import BadRequest, Request

Q = load_queries("labctl.web")
T = TypeVar("T")

Limit = Annotated[int, msgspec.Meta(ge=1, le=10_000)]


class RunsQuery(msgspec.Struct, frozen=True):
    user: str | None = None
    state: str | None = None
    limit: Limit = 200


class PipelinesQuery(msgspec.Struct, frozen=True):
    limit: Limit = 50


class EventsQuery(msgspec.Struct, frozen=True):
    after: Annotated[int, msgspec.Meta(ge=0)] = 0
    limit: Limit = 1000
    stream: str | None = None
    type: list[str] | None = None
    tail: Limit | None = None  # the newest N events of the log instead of those after ``after``


_LISTS = {"type"}


def decode_query(request: Request, into: type[T]) -> T:
    """The query string as a typed value; a bad parameter is a 400 that names it."""
    raw: dict[str, Any] = {k: (v if k in _LISTS else v[-1]) for k, v in request.query.items() if v and v[-1] != ""}
    try:
        return msgspec.convert(raw, into, strict=False)
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc)) from exc


def runs_json(conn: psycopg.Connection[Any], q: RunsQuery) -> bytes:
    """Runs newest first with the columns of ``labctl status --json``, built by the server like it."""
    query, params = runs.status_query(user=q.user, state=q.state, everything=True)
    sql = (
        "SELECT coalesce(json_agg(r ORDER BY r.created_at DESC, r.id DESC), '[]')::text "
        f"FROM (SELECT * FROM ({query}) s ORDER BY created_at DESC, id DESC LIMIT %(limit)s) r"
    )
    row = conn.execute(sql, {**params, "limit": q.limit}).fetchone()
    return row[0].encode() if row else b"[]"


def run_json(conn: psycopg.Connection[Any], ref: str) -> bytes:
    """One run like ``labctl show`` (an id or unambiguous prefix); UserError when there is none."""
    return runs.to_json(runs.show_run(conn, runs.resolve_run(conn, ref))).encode()


def pipelines_json(conn: psycopg.Connection[Any], q: PipelinesQuery) -> bytes:
    row = conn.execute(Q["pipelines_json"], {"limit": q.limit}).fetchone()
    return row[0].encode() if row else b"[]"


def events_json(conn: psycopg.Connection[Any], q: EventsQuery) -> bytes:
    """Events oldest first as a JSON array of ``labctl events --json`` objects."""
    after, limit = q.after, q.limit
    if q.tail is not None:
        row = conn.execute(Q["position_before_tail"], {"count": q.tail}).fetchone()
        after, limit = (int(row[0]) if row else 0), q.tail
    page = events.read_all(conn, after, limit, stream=q.stream, types=q.type)
    return b"[" + b",".join(event_json(e) for e in page) + b"]"
