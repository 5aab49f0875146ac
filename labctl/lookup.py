"""Finding an entity by its id or an unambiguous prefix of it."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from events.queries import load_queries
from labctl.errors import InputError, UserError

QUERIES = load_queries("labctl", "artifacts.sql")


def resolve_id(conn: psycopg.Connection[Any], table: str, kind: str, ref: str) -> str:
    """The id in ``table`` matching ``ref`` (with or without the ``<kind>_`` prefix), or one clear error."""
    if not ref.strip():
        raise InputError(f"expected a {kind} id (or an unambiguous prefix), got an empty string")
    prefix = ref if ref.startswith(f"{kind}_") else f"{kind}_{ref}"
    query = sql.SQL(QUERIES["ids_from"]).format(table=sql.Identifier(table))
    rows = conn.execute(query, {"prefix": prefix, "end": prefix + "\uffff"}).fetchall()
    if len(rows) == 1:
        return str(rows[0][0])
    if not rows:
        raise UserError(f"no {kind} {ref!r}")
    shown = ", ".join(r[0] for r in rows[:5])
    raise UserError(f"{ref!r} is ambiguous: it matches {shown}{' ...' if len(rows) > 5 else ''}")


def alias_target(conn: psycopg.Connection[Any], ref: str) -> str | None:
    """The artifact id an alias names, or None.

    ``owner/name`` is that user's alias. A bare ``name`` is looked up in one
    namespace shared by every user, as the original labctl's
    ``artifact_aliases``: the alias most recently set under that name, by
    anyone, wins (a teammate's ``qwen3vl2b_pretrained`` resolves for you).
    """
    owner, _, name = ref.rpartition("/")
    if owner:
        row = conn.execute(QUERIES["alias_target"], {"user": owner, "alias": name}).fetchone()
    else:
        row = conn.execute(QUERIES["latest_alias_target"], {"alias": name}).fetchone()
    return str(row[0]) if row else None
