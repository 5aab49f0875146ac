"""Append to and read from the event log. Knows nothing of what events mean."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import msgspec
import psycopg
from psycopg import errors as pg_errors
from psycopg.abc import Buffer
from psycopg.adapt import AdaptersMap, Dumper, PyFormat
from psycopg.pq import Format

from events.codec import Event, EventMeta, StoredEvent, decode_meta, encode
from events.errors import ActorRefused, ConcurrencyError, ImmutableLogError
from events.queries import load_queries

Q = load_queries("events")

CHANNEL = "labctl_events"
_CONFLICT = re.compile(r"stream (\S+) was expected at version (-?\d+) but is at version (\d+)")


class NewEvent(msgspec.Struct, frozen=True):
    """One event to append to ``stream``; ``expected_version`` is checked if not None."""

    stream: str
    event: Event
    expected_version: int | None = None


class EncodedBatch(list[NewEvent]):
    """A batch whose arrays for ``labctl_append`` were built when it was made (UTF-8).

    Made in a thread that plans the batches (an import's), so that the appending thread only sends
    them: the server appends one batch while the next one is encoded. The events are frozen, so the
    bytes stay theirs. On a connection whose encoding is not UTF-8, ``append_batch`` encodes again.
    """

    def __init__(self, batch: Iterable[NewEvent]) -> None:
        super().__init__(batch)
        self.arrays = _arrays(self, [encode(n.event) for n in self], "utf-8")


def _arrays(batch: Sequence[NewEvent], datas: list[bytes], charset: str) -> dict[str, bytes]:
    return {
        "streams": _TextArray.of([n.stream.encode(charset) for n in batch]),
        "expected": _IntArray.of([n.expected_version for n in batch]),
        "types": _TextArray.of([n.event.type_name.encode(charset) for n in batch]),
        "data": _JsonArray.of(datas),
    }


def append(
    conn: psycopg.Connection[Any],
    stream: str,
    events: Sequence[Event],
    *,
    expected_version: int | None,
    idempotency_key: str | None = None,
    meta: EventMeta | None = None,
) -> list[int]:
    """Append ``events`` to ``stream``; return their global positions.

    ``expected_version`` is the version the stream is at now (0 for a new
    stream), or None to skip the check. Re-sending an ``idempotency_key``
    returns the first append's positions and writes nothing.
    """
    batch = [NewEvent(stream, e, expected_version if i == 0 else None) for i, e in enumerate(events)]
    return [s.position for s in append_batch(conn, batch, idempotency_key=idempotency_key, meta=meta)]


def append_batch(
    conn: psycopg.Connection[Any],
    batch: Sequence[NewEvent],
    *,
    idempotency_key: str | None = None,
    meta: EventMeta | None = None,
) -> list[StoredEvent]:
    """Append events to any number of streams atomically; return them as stored.

    Runs inside the caller's transaction when there is one, so projections can
    be applied in the same transaction.
    """
    if not batch:
        return []
    meta = meta or EventMeta()
    if conn.adapters.get_dumper(_TextArray, PyFormat.BINARY) is not _DUMPERS[_TextArray]:
        _register_dumpers(conn.adapters)
    # The server reads text in the connection's encoding; msgspec writes UTF-8.
    charset = conn.info.encoding
    meta_json = encode(meta)
    if isinstance(batch, EncodedBatch) and charset == "utf-8":
        arrays = batch.arrays
    else:
        datas = [encode(n.event) for n in batch]
        if charset != "utf-8":
            datas = [d.decode().encode(charset) for d in datas]
            meta_json = meta_json.decode().encode(charset)
        arrays = _arrays(batch, datas, charset)
    params: dict[str, Any] = {**arrays, "meta": _Jsonb(meta_json), "key": idempotency_key}
    try:
        row = conn.execute(Q["append"], params).fetchone()
    except pg_errors.UniqueViolation as exc:
        # A backstop: the advisory lock makes this unreachable unless bypassed.
        raise ConcurrencyError(batch[0].stream, -1, -1) from exc
    except psycopg.Error as exc:
        raise _translate(exc) from exc
    assert row is not None
    first, versions, at, replayed = row
    if replayed is not None:
        # The key was used before: return what was stored then.
        return [_stored_at(conn, position) for position in replayed]
    return [
        StoredEvent(
            position=first + i,
            stream=n.stream,
            version=ver,
            type=n.event.type_name,
            event=n.event,
            meta=meta,
            recorded_at=at,
        )
        for i, (n, ver) in enumerate(zip(batch, versions, strict=True))
    ]


# A batch's arrays go to labctl_append in Postgres's binary array format, built here in one
# join: psycopg would dump a list element by element in Python (and quote every JSON text in
# a text-format array, for the server to unquote). Each wrapper type has a dumper that sends
# its bytes as they are, under the array's type oid. In binary, text and json elements are
# their bytes in the connection's encoding.
_ARRAY_HEAD = struct.Struct(">iiIii")  # dimensions, has nulls, element oid, length, lower bound
_LENGTH = struct.Struct(">i")
_INT_ELEMENT = struct.Struct(">ii")
_NULL = _LENGTH.pack(-1)


class _TextArray(bytes):
    """A text[] value in binary, from encoded elements."""

    element_oid = 25

    @classmethod
    def of(cls, items: list[bytes]) -> _TextArray:
        # Each element's length before it, interleaved by slice assignment (a fifth of this
        # function's time went to a tuple per element).
        parts: list[bytes] = [b""] * (2 * len(items))
        parts[0::2] = map(_LENGTH.pack, map(len, items))
        parts[1::2] = items
        return cls(_ARRAY_HEAD.pack(1, 0, cls.element_oid, len(items), 1) + b"".join(parts))


class _JsonArray(_TextArray):
    """A json[] value in binary, from encoded JSON texts."""

    element_oid = 114


class _IntArray(bytes):
    """An integer[] value in binary; None is NULL."""

    @classmethod
    def of(cls, items: list[int | None]) -> _IntArray:
        pack = _INT_ELEMENT.pack
        nulls = None in items
        return cls(
            _ARRAY_HEAD.pack(1, int(nulls), 23, len(items), 1)
            + b"".join([_NULL if i is None else pack(4, i) for i in items])
        )


class _Jsonb(bytes):
    """A jsonb value in binary, from its JSON text."""


class _AsIs(Dumper):
    format = Format.BINARY

    def dump(self, obj: Any) -> Buffer:
        return obj  # type: ignore[no-any-return]


class _JsonbDumper(Dumper):
    format = Format.BINARY
    oid = 3802

    def dump(self, obj: Any) -> Buffer:
        return b"\x01" + obj  # type: ignore[no-any-return]


_DUMPERS: dict[type, type[Dumper]] = {
    wrapper: type(f"{wrapper.__name__}Dumper", (_AsIs,), {"oid": oid})
    for wrapper, oid in ((_TextArray, 1009), (_JsonArray, 199), (_IntArray, 1007))
}
_DUMPERS[_Jsonb] = _JsonbDumper


def _register_dumpers(adapters: AdaptersMap) -> None:
    for wrapper, dumper in _DUMPERS.items():
        adapters.register_dumper(wrapper, dumper)


# Connections copy the global map when they open: those opened later get the dumpers from it,
# one opened before this module was imported gets them on its first append.
_register_dumpers(psycopg.adapters)


def _translate(exc: psycopg.Error) -> Exception:
    state = exc.sqlstate
    message = exc.diag.message_primary or str(exc)
    if state == "LB001":
        m = _CONFLICT.search(message)
        if m:
            return ConcurrencyError(m.group(1), int(m.group(2)), int(m.group(3)))
    if state == "LB002":
        return ImmutableLogError(message)
    if state == "LB003":
        return ActorRefused(message)
    return exc


def _stored_at(conn: psycopg.Connection[Any], position: int) -> StoredEvent:
    rows = conn.execute(Q["read_all"], {"after": position - 1, "limit": 1}).fetchall()
    return decode_rows(rows)[0]


def decode_rows(rows: Iterable[tuple[Any, ...]]) -> list[StoredEvent]:
    """Events from rows of ``(position, stream, version, type, data text, meta text, recorded_at)``
    (their data decoded when first asked for)."""
    return [
        StoredEvent(
            position=pos,
            stream=stream,
            version=ver,
            type=typ,
            raw=data,
            meta=decode_meta(meta),
            recorded_at=at,
        )
        for pos, stream, ver, typ, data, meta, at in rows
    ]


def read_all(
    conn: psycopg.Connection[Any],
    after: int = 0,
    limit: int = 1000,
    *,
    stream: str | None = None,
    types: Sequence[str] | None = None,
    until: int | None = None,
) -> list[StoredEvent]:
    """Events with position > ``after`` in order, at most ``limit`` of them."""
    # Binary results: timestamps and integers arrive without text parsing (faster pages).
    if stream is None and types is None and until is None:
        rows = conn.execute(Q["read_all"], {"after": after, "limit": limit}, binary=True).fetchall()
    else:
        rows = conn.execute(
            Q["read_all_filtered"],
            {
                "after": after,
                "limit": limit,
                "stream": stream,
                "types": list(types) if types is not None else None,
                "until": until,
            },
            binary=True,
        ).fetchall()
    return decode_rows(rows)


def read_stream(conn: psycopg.Connection[Any], stream: str, after_version: int = 0) -> list[StoredEvent]:
    """One stream's events in version order."""
    rows = conn.execute(Q["read_stream"], {"stream": stream, "after_version": after_version}).fetchall()
    return decode_rows(rows)


def read_streams(conn: psycopg.Connection[Any], streams: Sequence[str]) -> dict[str, list[StoredEvent]]:
    """Several streams' events, each in version order, in one query (a stream without events is absent)."""
    found: dict[str, list[StoredEvent]] = {}
    rows = conn.execute(Q["read_streams"], {"streams": list(streams)}).fetchall()
    for e in decode_rows(rows):
        found.setdefault(e.stream, []).append(e)
    return found


def stream_version(conn: psycopg.Connection[Any], stream: str) -> int:
    """The version a stream is at (0 when it has no events)."""
    row = conn.execute(Q["stream_version"], {"stream": stream}).fetchone()
    return int(row[0]) if row else 0


def streams_matching(conn: psycopg.Connection[Any], prefix: str) -> list[str]:
    """Streams whose name starts with ``prefix`` (at most 20)."""
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return [r[0] for r in conn.execute(Q["streams_like"], {"pattern": pattern}).fetchall()]


def last_position(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(Q["last_position"]).fetchone()
    return int(row[0]) if row else 0


def position_at(conn: psycopg.Connection[Any], at: datetime) -> int:
    """The last position recorded at or before ``at``."""
    row = conn.execute(Q["position_at"], {"at": at}).fetchone()
    return int(row[0]) if row else 0


def event_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(Q["event_count"]).fetchone()
    return int(row[0]) if row else 0
