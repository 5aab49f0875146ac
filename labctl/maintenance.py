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
from labctl.db import Database, current_schema_version, describe_url, schema_sql, schema_version_of_file
from labctl.errors import InputError


class Check(msgspec.Struct):
    name: str
    value: str
    ok: bool = True


def doctor(db: Database) -> list[Check]:
    """What a person needs to know about the database; the first failed check is the reason."""
    checks = [Check("database", describe_url(db.url))]
    conn = db.conn
    checks.append(Check("server", str(conn.execute("SHOW server_version").fetchone()[0])))  # type: ignore[index]
    expected = schema_version_of_file(schema_sql())
    version = current_schema_version(conn)
    checks.append(Check("schema version", f"{version} (this labctl: {expected})", version == expected))
    last = events.last_position(conn)
    checks.append(Check("events", f"{events.event_count(conn)} (last position {last})"))
    for name, position in projections.checkpoints(conn).items():
        checks.append(Check(f"projection {name}", f"at {position}, lag {last - position}"))
    for name, position in conn.execute("SELECT name, position FROM reactor_checkpoints ORDER BY name").fetchall():
        checks.append(Check(f"reactor {name}", f"at {position}, lag {last - position}"))
    now = datetime.now(UTC)
    for agent_id, host, pid, beat in conn.execute(
        "SELECT id, host, pid, heartbeat_at FROM agents WHERE stopped_at IS NULL ORDER BY started_at"
    ).fetchall():
        age = (now - beat).total_seconds()
        checks.append(Check(f"agent {agent_id}", f"{host} pid {pid}, heartbeat {age:.1f}s ago"))
    usage = conn.execute("SELECT pg_notification_queue_usage()").fetchone()[0]  # type: ignore[index]
    checks.append(Check("notification queue", f"{usage:.1%} used", usage < 0.5))
    return checks


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
    position: int
    broken_at: int | None
    differences: list[projections.engine.RowDiff]

    @property
    def clean(self) -> bool:
        return self.broken_at is None and not self.differences


def audit(conn: psycopg.Connection[Any]) -> AuditReport:
    """Verify the hash chain, then rebuild in memory and diff with the live tables."""
    broken = events.first_broken_link(conn)
    position, diffs = projections.diff_live(conn)
    return AuditReport(events.event_count(conn), position, broken, diffs)


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
    rows = conn.execute("SELECT id, hash, path FROM artifacts WHERE removed_at IS NULL ORDER BY id").fetchall()
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
