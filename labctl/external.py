"""Registering bytes labctl does not own (``labctl register-external``): never moved, never collected."""

from __future__ import annotations

import os
import uuid

import msgspec

from events import NewEvent
from events.types import AliasSet, ArtifactRegistered
from labctl.aliases import alias_kinds, check_alias_name, kind_root, sync_alias_link
from labctl.app import App
from labctl.artifact_queries import find_artifact
from labctl.artifacts import artifact_id, path_identity_hash
from labctl.errors import InputError
from labctl.realpath import realpath
from labctl.retry import retry_on_conflict

EXTERNAL_KIND = "external"


class Registration(msgspec.Struct, kw_only=True):
    artifact_id: str
    path: str
    kind: str
    alias: str
    new: bool  # False: the path was registered before and only the alias was set
    link: str | None


def register_external(app: App, *, alias: str, path: str, kind: str = EXTERNAL_KIND) -> Registration:
    """Record bytes labctl does not own (never moved, never collected) and point an alias at them."""
    if not os.path.exists(path):
        raise InputError(f"{path} does not exist")
    check_alias_name(app.user, alias)
    if kind_root(app, kind) is None:
        known = ", ".join(sorted(app.config.filesystem.artifact_roots)) or "none"
        raise InputError(f"no artifact root for kind {kind!r} in the cluster config (configured: {known})")
    canonical = realpath(path)
    digest = path_identity_hash(canonical)
    aid = artifact_id(digest)
    size = os.path.getsize(canonical) if os.path.isfile(canonical) else None
    conn = app.db.conn

    def attempt() -> Registration:
        kinds_before = alias_kinds(conn, app.user, alias)
        existing = find_artifact(conn, aid)
        batch = []
        if existing is None:
            registered = ArtifactRegistered(
                artifact_id=aid,
                hash=digest,
                kind=kind,
                path=canonical,
                user=app.user,
                size_bytes=size,
                metadata={"external": True, "given_path": path},
            )
            batch.append(NewEvent(f"artifact-{aid}", registered, 0))
        batch.append(NewEvent(f"alias-{app.user}/{alias}", AliasSet(user=app.user, alias=alias, artifact_id=aid)))
        app.record(batch, f"register-external-{uuid.uuid4().hex}")
        link = sync_alias_link(app, app.user, alias, kinds_before)
        recorded_kind = existing.kind if existing else kind
        return Registration(
            artifact_id=aid,
            path=canonical,
            kind=recorded_kind,
            alias=alias,
            new=existing is None,
            link=str(link) if link is not None else None,
        )

    # Someone registered the same path at the same moment: it exists now, look again.
    return retry_on_conflict(attempt, what=f"register {canonical}")
