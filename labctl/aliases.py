"""Aliases: a user's names for artifacts, recorded as events, with a symlink under the kind's root.

The log is the truth and the symlinks follow it: each change is recorded first,
then the links on disk are brought in line with the read model.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import psycopg

import events
from events import NewEvent
from events.queries import rows_as
from events.types import AliasRemoved, AliasSet
from labctl.app import App
from labctl.artifact_queries import QUERIES, resolve_artifact
from labctl.artifacts import remove_alias_link, set_alias_link
from labctl.artifacts.store import alias_link_path
from labctl.errors import InputError, UserError
from labctl.retry import retry_on_conflict


def kind_root(app: App, kind: str) -> Path | None:
    root = app.config.filesystem.artifact_roots.get(kind)
    return Path(root) if root else None


def check_alias_name(user: str, alias: str) -> None:
    try:
        alias_link_path("/", user, alias)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def sync_alias_link(app: App, user: str, alias: str, kinds_before: set[str]) -> Path | None:
    """Make ``aliases/<user>/<alias>`` under every involved kind root match the read model."""
    conn = app.db.conn
    row = conn.execute(QUERIES["alias_artifacts"], {"user": user, "alias": alias}).fetchone()
    link = None
    try:
        current_root = kind_root(app, row[0]) if row else None
        for kind in kinds_before:
            root = kind_root(app, kind)
            if root is not None and root != current_root:
                remove_alias_link(root, user, alias)
        if row is not None and current_root is not None:
            link = set_alias_link(current_root, user, alias, row[1])
    except (OSError, ValueError) as exc:
        raise UserError(f"alias {user}/{alias} is recorded, but its link could not be updated: {exc}") from exc
    return link


def alias_kinds(conn: psycopg.Connection[Any], user: str, alias: str) -> set[str]:
    rows = conn.execute(QUERIES["alias_artifacts"], {"user": user, "alias": alias}).fetchall()
    return {r[0] for r in rows}


class AliasEntry(msgspec.Struct, kw_only=True):
    user: str
    alias: str
    artifact_id: str
    kind: str
    path: str
    set_at: datetime


def list_aliases(conn: psycopg.Connection[Any], *, user: str | None) -> list[AliasEntry]:
    return rows_as(conn, AliasEntry, QUERIES["aliases_list"], {"user": user})


class AliasChange(msgspec.Struct, kw_only=True):
    user: str
    alias: str
    artifact_id: str
    link: str | None


def set_alias(app: App, name: str, ref: str) -> AliasChange:
    """Point the user's alias ``name`` at an artifact (by id, prefix or another alias)."""
    check_alias_name(app.user, name)
    target = resolve_artifact(app.db.conn, app.user, ref)
    kinds_before = alias_kinds(app.db.conn, app.user, name)
    event = AliasSet(user=app.user, alias=name, artifact_id=target.id)
    app.record([NewEvent(f"alias-{app.user}/{name}", event)], f"alias-set-{uuid.uuid4().hex}")
    link = sync_alias_link(app, app.user, name, kinds_before)
    return AliasChange(user=app.user, alias=name, artifact_id=target.id, link=str(link) if link is not None else None)


def remove_alias(app: App, name: str) -> AliasChange:
    """Remove the user's alias ``name`` (the artifact stays; gc may collect it later)."""
    check_alias_name(app.user, name)  # refused before anything is appended
    conn = app.db.conn

    def attempt() -> AliasChange:
        row = conn.execute(QUERIES["alias_target"], {"user": app.user, "alias": name}).fetchone()
        if row is None:
            raise UserError(f"no alias {name!r} for user {app.user}")
        kinds_before = alias_kinds(conn, app.user, name)
        stream = f"alias-{app.user}/{name}"
        removed = NewEvent(stream, AliasRemoved(user=app.user, alias=name), events.stream_version(conn, stream))
        app.record([removed], f"alias-rm-{uuid.uuid4().hex}")
        sync_alias_link(app, app.user, name, kinds_before)
        return AliasChange(user=app.user, alias=name, artifact_id=row[0], link=None)

    # It was just re-pointed or removed: look again.
    return retry_on_conflict(attempt, what=f"remove alias {name!r}")
