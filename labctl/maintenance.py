"""Looking after the database: doctor, replay, audit."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import psycopg

import events
import projections
from events import verify
from labctl.db import QUERIES, Database, current_schema_version, describe_url, schema_sql, schema_version_of_file
from labctl.errors import InputError
from labctl.progress import ProgressBar


class Check(msgspec.Struct):
    name: str
    value: str
    ok: bool = True


def doctor(db: Database) -> list[Check]:
    """What a person needs to know about the database; the first failed check is the reason."""
    checks = [Check("database", describe_url(db.url))]
    conn = db.conn
    checks.append(Check("server", str(conn.execute(QUERIES["server_version"]).fetchone()[0])))  # type: ignore[index]
    expected = schema_version_of_file(schema_sql())
    version = current_schema_version(conn)
    checks.append(Check("schema version", f"{version} (this labctl: {expected})", version == expected))
    last = events.last_position(conn)
    checks.append(Check("events", f"{events.event_count(conn)} (last position {last})"))
    for name, position in projections.checkpoints(conn).items():
        checks.append(Check(f"projection {name}", f"at {position}, lag {last - position}"))
    for name, position in conn.execute(QUERIES["reactor_checkpoints"]).fetchall():
        checks.append(Check(f"reactor {name}", f"at {position}, lag {last - position}"))
    now = datetime.now(UTC)
    for agent_id, host, pid, beat in conn.execute(QUERIES["live_agents"]).fetchall():
        age = (now - beat).total_seconds()
        checks.append(Check(f"agent {agent_id}", f"{host} pid {pid}, heartbeat {age:.1f}s ago"))
    usage = conn.execute(QUERIES["notification_queue_usage"]).fetchone()[0]  # type: ignore[index]
    checks.append(Check("notification queue", f"{usage:.1%} used", usage < 0.5))
    return checks


def schema_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    """Whether the database has a schema ``name`` (e.g. an as-of snapshot ``replay --until`` kept)."""
    row = conn.execute(QUERIES["schema_exists"], {"name": name}).fetchone()
    return bool(row and row[0])


def parse_until(conn: psycopg.Connection[Any], until: str, option: str = "--until") -> int:
    """A position from ``POSITION`` or an ISO timestamp (the last event at or before it)."""
    if until.isascii() and until.isdigit():
        return check_position(int(until), option)
    try:
        at = datetime.fromisoformat(until)
        if at.tzinfo is None:
            at = at.astimezone()
        at.astimezone(UTC)  # a time near year 1 or 9999 cannot be moved to UTC
    except (ValueError, OverflowError):
        raise InputError(f"{option} {until!r} is neither a position nor an ISO timestamp") from None
    return events.position_at(conn, at)


def check_position(value: int, option: str) -> int:
    """``value`` if it is a log position (or a count of events) Postgres can hold; else InputError."""
    if not 0 <= value <= 2**63 - 1:
        raise InputError(f"{option} {value}: expected a number from 0 to {2**63 - 1}")
    return value


class AuditReport(msgspec.Struct):
    events_checked: int
    checked_after: int  # the chain was recomputed from the event after this position (0: from the start)
    position: int  # the last position checked
    head_hash: bytes
    problems: list[str]
    broken_at: int | None
    differences: list[projections.engine.RowDiff]
    models_checked: bool

    @property
    def clean(self) -> bool:
        return not self.problems and not self.differences


def parse_anchor(text: str) -> tuple[int, bytes]:
    """``POSITION:HASH`` (as ``labctl audit head`` prints it)."""
    position, _, digest = text.partition(":")
    try:
        value = (int(position), bytes.fromhex(digest))
    except ValueError:
        value = (0, b"")
    if value[0] <= 0 or len(value[1]) != 32:
        raise InputError(f"--expect {text!r}: expected POSITION:HASH as printed by `labctl audit head`")
    return value


def anchor(conn: psycopg.Connection[Any]) -> str:
    """``POSITION:HASH`` of the log's last event, to keep outside the database."""
    position, digest = verify.head(conn)
    return f"{position}:{digest.hex()}"


def _truncation(conn: psycopg.Connection[Any], last: int) -> str | None:
    """Signs that events were removed from the log's end: things that point past it."""
    verified = verify.last_verified(conn)
    if verified is not None:
        position, digest = verified
        if position > last:
            return (
                f"the log ends at position {last} but was verified up to {position} before: "
                "events were removed from its end"
            )
        if verify.hash_at(conn, position) != digest:
            return f"the event at position {position} changed since it was verified"
    for name, position in conn.execute(QUERIES["checkpoints_past"], {"last": last}):
        return f"reactor {name} has handled events up to {position}, past the log's end at {last}: events were removed"
    return None


def audit(
    conn: psycopg.Connection[Any],
    *,
    full: bool = False,
    expect: tuple[int, bytes] | None = None,
) -> AuditReport:
    """Recompute the hash chain in Python, from the last verified position (or, ``full``, the start).

    ``full`` also rebuilds the read models in memory and diffs them with the
    live tables. ``expect`` is an anchor kept elsewhere: the log must still
    hold exactly that prefix. A clean audit records the position it reached.
    """
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        last, _ = verify.head(conn)
        truncated = _truncation(conn, last)
        start: tuple[int, bytes] = (0, b"")
        if not full and expect is None and truncated is None:
            start = verify.last_verified(conn) or start
        with ProgressBar("verifying", last - start[0]) as bar:
            chain = verify.verify_chain(conn, after=start[0], previous=start[1], progress=bar)
        problems = [p for p in (truncated, chain.problem) if p is not None]
        if expect is not None and chain.problem is None:
            problems += [p for p in [_expect_problem(conn, expect, chain.last_position)] if p is not None]
    diffs: list[projections.engine.RowDiff] = []
    if full:
        with ProgressBar("comparing read models", projections.checkpoint(conn)) as bar:
            _position, diffs = projections.diff_live(conn, progress=bar, tables=bar.tables)
    if not problems and not diffs and chain.last_position > 0:
        verify.record_verified(conn, chain.last_position, chain.last_hash)
    return AuditReport(
        chain.checked, start[0], chain.last_position, chain.last_hash, problems, chain.broken_at, diffs, full
    )


def _expect_problem(conn: psycopg.Connection[Any], expect: tuple[int, bytes], last: int) -> str | None:
    position, digest = expect
    if position > last:
        return f"the log ends at position {last}, before the expected {position}: events were removed from its end"
    if verify.hash_at(conn, position) != digest:
        return f"the log no longer holds the expected prefix: the hash at position {position} differs"
    return None


class ChangedObject(msgspec.Struct):
    artifact_id: str
    path: str
    problem: str


class ObjectsReport(msgspec.Struct):
    checked: int
    changed: list[ChangedObject]
    seconds: float


def audit_objects(conn: psycopg.Connection[Any]) -> ObjectsReport:
    """Re-hash every object in the store that a live artifact points at; report those whose bytes changed."""
    from labctl.artifacts.store import root_of_object, verify_object

    started = time.perf_counter()
    rows = conn.execute(QUERIES["live_artifacts"]).fetchall()
    checked, changed = 0, []
    for artifact_id, content_hash, path in rows:
        root = root_of_object(path, content_hash)
        if root is None:
            continue  # external or a checkpoint step: named by its path, not its bytes
        checked += 1
        if not Path(path).is_dir():
            changed.append(ChangedObject(artifact_id, path, "missing"))
        elif not verify_object(root, content_hash):
            changed.append(ChangedObject(artifact_id, path, f"its bytes no longer hash to {content_hash}"))
    return ObjectsReport(checked, changed, time.perf_counter() - started)
