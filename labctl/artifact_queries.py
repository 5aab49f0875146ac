"""Reading artifacts: one by id, prefix or alias, and lists of them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import psycopg

from labctl.errors import UserError
from labctl.lookup import alias_target


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


ARTIFACT_COLUMNS = (
    "a.id, a.hash, a.kind, a.path, a.user_name, a.producer_run_id, a.size_bytes, a.metadata, a.created_at, "
    "a.removed_at, coalesce((SELECT array_agg(al.user_name || '/' || al.alias ORDER BY al.user_name, al.alias) "
    "FROM aliases al WHERE al.artifact_id = a.id), '{}')"
)


def artifact_from_row(row: tuple[Any, ...]) -> Artifact:
    return Artifact(
        id=row[0],
        hash=row[1],
        kind=row[2],
        path=row[3],
        user=row[4],
        producer_run_id=row[5],
        size_bytes=row[6],
        metadata=row[7],
        created_at=row[8],
        removed_at=row[9],
        aliases=list(row[10]),
    )


def find_artifact(conn: psycopg.Connection[Any], artifact_id_: str) -> Artifact | None:
    row = conn.execute(f"SELECT {ARTIFACT_COLUMNS} FROM artifacts a WHERE a.id = %s", (artifact_id_,)).fetchone()
    return artifact_from_row(row) if row else None


def artifact_detail(conn: psycopg.Connection[Any], art: Artifact) -> dict[str, Any]:
    """What ``labctl show ARTIFACT`` prints: the artifact, its eval result (``metadata.result``) on top,
    and the runs that read it."""
    consumers = [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT run_id FROM run_inputs WHERE artifact_id = %s ORDER BY run_id", (art.id,)
        ).fetchall()
    ]
    detail: dict[str, Any] = msgspec.to_builtins(art)
    if isinstance(art.metadata, dict) and "result" in art.metadata:
        detail["result"] = art.metadata["result"]
    detail["consumers"] = consumers
    return detail


def resolve_artifact(conn: psycopg.Connection[Any], user: str, ref: str, *, include_removed: bool = False) -> Artifact:
    """An artifact from its id, an unambiguous id prefix, or an alias (``name`` for ``user``, or ``owner/name``)."""
    if ref.startswith("artifact_"):
        rows = conn.execute(
            "SELECT id, removed_at FROM artifacts WHERE id >= %s AND id < %s ORDER BY id LIMIT 6",
            (ref, ref + "\uffff"),
        ).fetchall()
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
    where = ["TRUE"]
    params: dict[str, Any] = {"limit": limit}
    if kind is not None:
        where.append("a.kind = %(kind)s")
        params["kind"] = kind
    if user is not None:
        where.append("a.user_name = %(user)s")
        params["user"] = user
    if not include_removed:
        where.append("a.removed_at IS NULL")
    query = (
        f"SELECT * FROM (SELECT {ARTIFACT_COLUMNS} FROM artifacts a WHERE {' AND '.join(where)} "
        "ORDER BY a.created_at DESC, a.id DESC LIMIT %(limit)s) t ORDER BY 9, 1"
    )
    return [artifact_from_row(r) for r in conn.execute(query, params).fetchall()]


def short_alias(qualified: str, user: str) -> str:
    """``name`` for the current user's aliases, ``owner/name`` for others' (as you would type it)."""
    owner, _, name = qualified.partition("/")
    return name if owner == user else qualified
