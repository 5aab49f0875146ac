"""Showing the event log to people: tables, JSON lines, one entity's history."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
import orjson
import psycopg

import events
from events import StoredEvent, UnknownEvent
from labctl.errors import UserError
from labctl.jsontext import dumps
from labctl.table import cell

_BULKY = {"recipe", "inputs", "outputs", "stages", "repo_diff", "metrics", "run_ids", "metadata"}


def event_json(e: StoredEvent) -> bytes:
    """One event as a JSON object: position, stream, version, type, data, meta, recorded_at."""
    data: Any = orjson.loads(e.data.raw) if isinstance(e.data, UnknownEvent) else msgspec.to_builtins(e.data)
    return dumps(
        {
            "position": e.position,
            "stream": e.stream,
            "version": e.version,
            "type": e.type,
            "data": data,
            "meta": msgspec.to_builtins(e.meta),
            "recorded_at": e.recorded_at.isoformat(),
        }
    )


def summary(e: StoredEvent) -> str:
    """The event's small fields as ``key=value``; bulky ones are summarized."""
    if isinstance(e.data, UnknownEvent):
        return "(unknown event type)"
    parts = []
    for name in e.data.__struct_fields__:
        value = getattr(e.data, name)
        if value is None or value == [] or value == {}:
            continue
        if name in _BULKY:
            size = len(value) if hasattr(value, "__len__") else 1
            parts.append(f"{name}=({size})")
        else:
            parts.append(f"{name}={cell(value)}")
    if e.meta.actor:
        parts.append(f"by={e.meta.actor}")
    return " ".join(parts)


def event_line(e: StoredEvent) -> str:
    return f"{e.position:>8}  {cell(e.recorded_at)}  {e.stream:<28}  {e.type:<20}  {summary(e)}"


def history_line(e: StoredEvent) -> str:
    ts = e.recorded_at.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return f"{ts}  v{e.version:<3} {e.type:<20}  {summary(e)}"


_PREFIXES = {
    "run_": "run-",
    "artifact_": "artifact-",
    "pipeline_": "pipeline-",
    "sweep_": "sweep-",
}


def resolve_stream(conn: psycopg.Connection[Any], ref: str) -> str:
    """A stream name from an id, an unambiguous id prefix, or a stream name."""
    if events.stream_version(conn, ref) > 0:
        return ref
    candidates = [ref]
    for id_prefix, stream_prefix in _PREFIXES.items():
        if ref.startswith(id_prefix):
            candidates = [stream_prefix + ref]
    for candidate in candidates:
        if events.stream_version(conn, candidate) > 0:
            return candidate
        matches = events.streams_matching(conn, candidate)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            shown = ", ".join(matches[:5])
            raise UserError(f"{ref!r} is ambiguous: it matches {shown}{' ...' if len(matches) > 5 else ''}")
    raise UserError(f"no run, artifact, pipeline or stream named {ref!r}")


def history(conn: psycopg.Connection[Any], ref: str) -> tuple[str, list[StoredEvent]]:
    stream = resolve_stream(conn, ref)
    return stream, events.read_stream(conn, stream)


def print_events(batch: Iterable[StoredEvent], *, as_json: bool) -> None:
    import sys

    out = sys.stdout
    for e in batch:
        if as_json:
            out.write(event_json(e).decode() + "\n")
        else:
            out.write(event_line(e) + "\n")
    out.flush()
