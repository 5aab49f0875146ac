"""Checking the hash chain, in Python: nothing stored in the database is trusted to compute a hash.

Each event's hash is ``sha256(previous event's hash || payload)``. Two payload
encodings exist (table ``event_hash_encodings`` says from which position each
applies): 1 joins the fields with ``\\x1f`` (logs written before schema 3:
ambiguous, kept so old logs still verify), 2 writes integers at fixed width
and each text after its length. From the first encoding-2 position on,
positions are contiguous, so a deleted event is a hole.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import Any

import msgspec
import psycopg

JOINED = 1
LENGTH_PREFIXED = 2

_FIXED = struct.Struct(">qiqi")  # position, version, recorded_at in microseconds, length of stream
_LENGTH = struct.Struct(">i")

# The stored JSON texts as UTF-8 bytes, and recorded_at as microseconds since 1970, by the server's
# built-in functions (extract is exact: numeric).
_SCAN = (
    "SELECT position, stream, version, type, convert_to(data::text, 'UTF8'), convert_to(meta::text, 'UTF8'), "
    "(extract(epoch FROM recorded_at) * 1000000)::bigint, hash "
    "FROM labctl.events WHERE position > %s AND (%s::bigint IS NULL OR position <= %s) ORDER BY position"
)

Progress = Callable[[int], None]


def payload(
    encoding: int, position: int, stream: str, version: int, type_: str, data: bytes, meta: bytes, micros: int
) -> bytes:
    """The bytes an event's hash covers (``data``/``meta``: their stored text, UTF-8)."""
    s = stream.encode()
    t = type_.encode()
    if encoding == LENGTH_PREFIXED:
        return b"".join(
            (
                _FIXED.pack(position, version, micros, len(s)),
                s,
                _LENGTH.pack(len(t)),
                t,
                _LENGTH.pack(len(data)),
                data,
                _LENGTH.pack(len(meta)),
                meta,
            )
        )
    if encoding == JOINED:
        seconds, fraction = divmod(micros, 1_000_000)
        epoch = f"{seconds}.{fraction:06d}".encode()
        return b"\x1f".join((str(position).encode(), s, str(version).encode(), t, data, meta, epoch))
    raise ValueError(f"unknown hash encoding {encoding}")


class ChainReport(msgspec.Struct):
    """What a scan of the chain found: how far it got and the first problem, if any."""

    checked: int
    last_position: int
    last_hash: bytes
    broken_at: int | None = None
    problem: str | None = None


def encodings(conn: psycopg.Connection[Any]) -> list[tuple[int, int]]:
    """``(from_position, encoding)`` pairs, in order of position."""
    rows = conn.execute(
        "SELECT from_position, encoding FROM labctl.event_hash_encodings ORDER BY from_position"
    ).fetchall()
    return [(int(p), int(e)) for p, e in rows] or [(1, LENGTH_PREFIXED)]


def verify_chain(
    conn: psycopg.Connection[Any],
    *,
    after: int = 0,
    previous: bytes = b"",
    until: int | None = None,
    progress: Progress | None = None,
) -> ChainReport:
    """Recompute every hash after position ``after`` (whose hash is ``previous``) up to ``until``.

    Stops at the first event whose hash or position is wrong. Call inside a
    transaction (a server-side cursor streams the log).
    """
    switches = encodings(conn)
    strict_from = min((p for p, e in switches if e == LENGTH_PREFIXED), default=1)
    bounds = [p for p, _ in switches[1:]] + [2**63 - 1]
    encoding_index = 0
    while encoding_index + 1 < len(switches) and switches[encoding_index + 1][0] <= after + 1:
        encoding_index += 1
    encoding, next_switch = switches[encoding_index][1], bounds[encoding_index]

    last_position, prev, checked = after, previous, 0
    sha256 = hashlib.sha256
    with conn.cursor(name="labctl_verify", binary=True) as cur:
        cur.itersize = 20000
        cur.execute(_SCAN, (after, until, until))
        for position, stream, version, type_, data, meta, micros, stored in cur:
            while position >= next_switch:
                encoding_index += 1
                encoding, next_switch = switches[encoding_index][1], bounds[encoding_index]
            if position != last_position + 1 and position >= strict_from:
                return ChainReport(
                    checked,
                    last_position,
                    prev,
                    last_position + 1,
                    f"position {last_position + 1} is missing (the next event is at {position}): events were deleted",
                )
            digest = sha256(prev + payload(encoding, position, stream, version, type_, data, meta, micros)).digest()
            if digest != stored:
                return ChainReport(
                    checked, last_position, prev, position, f"the event at position {position} was altered"
                )
            prev, last_position = stored, position
            checked += 1
            if progress is not None and checked % 20000 == 0:
                progress(checked)
    if progress is not None:
        progress(checked)
    return ChainReport(checked, last_position, prev)


def head(conn: psycopg.Connection[Any]) -> tuple[int, bytes]:
    """The last event's position and hash (``(0, b"")`` for an empty log)."""
    row = conn.execute("SELECT position, hash FROM labctl.events ORDER BY position DESC LIMIT 1").fetchone()
    return (int(row[0]), bytes(row[1])) if row else (0, b"")


def hash_at(conn: psycopg.Connection[Any], position: int) -> bytes | None:
    row = conn.execute("SELECT hash FROM labctl.events WHERE position = %s", (position,)).fetchone()
    return bytes(row[0]) if row else None


def last_verified(conn: psycopg.Connection[Any]) -> tuple[int, bytes] | None:
    """The furthest position a past verify recorded, and its hash then."""
    row = conn.execute(
        "SELECT position, hash FROM labctl.audit_checkpoints ORDER BY position DESC, verified_at DESC LIMIT 1"
    ).fetchone()
    return (int(row[0]), bytes(row[1])) if row else None


def record_verified(conn: psycopg.Connection[Any], position: int, digest: bytes) -> None:
    """Remember that the log was verified up to ``position`` (whose hash is ``digest``)."""
    conn.execute("SELECT labctl.labctl_record_verified(%s, %s)", (position, digest))
