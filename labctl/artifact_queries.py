"""Reading artifacts: one by id, prefix or alias, and lists of them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import psycopg

from events.queries import load_queries, rows_as
from labctl.errors import UserError
from labctl.lookup import alias_target

QUERIES = load_queries("labctl", "artifacts.sql")


class Artifact(msgspec.Struct, kw_only=True):
    id: str
    hash: str
    kind: str
    path: str
    user: str
    producer_run_id: str | None
    size_bytes: int | None
    metadata: dict[str, Any]
    created_at: datetime
    removed_at: datetime | None
    aliases: list[str] = []  # "user/alias"


def find_artifacts(
    conn: psycopg.Connection[Any],
    *,
    ids: list[str] | None = None,
    kind: str | None = None,
    user: str | None = None,
    include_removed: bool = True,
    limit: int | None = None,
) -> list[Artifact]:
    """Artifacts oldest first: the newest ``limit`` (None: all) with these ids, of this kind, of this user
    (each filter only when not None)."""
    params = {"ids": ids, "kind": kind, "user": user, "include_removed": include_removed, "limit": limit}
    return rows_as(conn, Artifact, QUERIES["artifacts"], params)


def find_artifact(conn: psycopg.Connection[Any], artifact_id_: str) -> Artifact | None:
    found = find_artifacts(conn, ids=[artifact_id_])
    return found[0] if found else None


def artifact_detail(conn: psycopg.Connection[Any], art: Artifact) -> dict[str, Any]:
    """What ``labctl show ARTIFACT`` prints: the artifact, its eval result (``metadata.result``) on top,
    and the runs that read it."""
    consumers = [r[0] for r in conn.execute(QUERIES["consumers"], {"id": art.id}).fetchall()]
    detail: dict[str, Any] = msgspec.to_builtins(art)
    if isinstance(art.metadata, dict) and "result" in art.metadata:
        detail["result"] = art.metadata["result"]
    detail["consumers"] = consumers
    return detail


def resolve_artifact(conn: psycopg.Connection[Any], user: str, ref: str, *, include_removed: bool = False) -> Artifact:
    """An artifact from its id, an unambiguous id prefix, or an alias (``name`` for ``user``, or ``owner/name``)."""
    if ref.startswith("artifact_"):
        rows = conn.execute(QUERIES["artifact_ids_from"], {"prefix": ref, "end": ref + "\uffff"}).fetchall()
        if len(rows) > 1:
            shown = ", ".join(r[0] for r in rows[:5])
            raise UserError(f"{ref!r} is ambiguous: it matches {shown}{' ...' if len(rows) > 5 else ''}")
        if not rows:
            raise UserError(f"no artifact {ref!r}")
        found = find_artifact(conn, rows[0][0])
    else:
        target = alias_target(conn, ref)
        if target is None:
            raise UserError(f"no artifact id or alias {ref!r}")
        found = find_artifact(conn, target)
    if found is None:
        raise UserError(f"no artifact {ref!r}")
    if found.removed_at is not None and not include_removed:
        raise UserError(f"{found.id} was collected by gc on {found.removed_at:%Y-%m-%d}: its bytes are gone")
    return found


def list_artifacts(
    conn: psycopg.Connection[Any],
    *,
    kind: str | None = None,
    user: str | None = None,
    include_removed: bool = False,
    limit: int | None = 200,
) -> list[Artifact]:
    """Artifacts, oldest first (the newest ``limit`` of them)."""
    return find_artifacts(conn, kind=kind, user=user, include_removed=include_removed, limit=limit)


def artifact_kinds(conn: psycopg.Connection[Any]) -> set[str]:
    """The kinds artifacts were registered under."""
    return {k for (k,) in conn.execute(QUERIES["artifact_kinds"]).fetchall()}


def registered_by(conn: psycopg.Connection[Any], run_ids: list[str]) -> int:
    """How many artifacts these runs registered."""
    row = conn.execute(QUERIES["artifacts_registered_by"], {"run_ids": run_ids}).fetchone()
    return int(row[0]) if row else 0


def short_alias(qualified: str, user: str) -> str:
    """``name`` for the current user's aliases, ``owner/name`` for others' (as you would type it)."""
    owner, _, name = qualified.partition("/")
    return name if owner == user else qualified
