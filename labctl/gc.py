"""Collecting garbage: the bytes of artifacts nothing needs any more.

gc records ArtifactsCollected before it deletes any bytes, so nothing can pick
an artifact whose bytes are on their way out.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import psycopg

import projections
from events import NewEvent
from events.queries import load_queries, rows_as
from events.types import ArtifactsCollected, CacheInvalidated
from labctl import cache
from labctl.app import App
from labctl.artifacts import remove_object
from labctl.artifacts.store import OBJECTS_DIRNAME
from labctl.errors import InputError
from labctl.external import EXTERNAL_KIND
from labctl.files import ClusterConfig
from labctl.names import OutsideRoot, inside
from projections.engine import APPEND_LOCK
from projections.runs import TERMINAL_STATES

QUERIES = load_queries("labctl", "artifacts.sql")

log = logging.getLogger(__name__)

_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_AGE_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE_MAX_SECONDS = 100 * 365 * 86400  # beyond this a cutoff falls before year 1


def parse_age(value: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"2w"``, ``"0s"``."""
    match = _AGE.match(value)
    if not match:
        raise InputError(f"bad age {value!r}: expected a number and a unit (s, m, h, d, w), e.g. 30d")
    seconds = int(match.group(1)) * _AGE_UNIT[match.group(2)]
    if seconds > _AGE_MAX_SECONDS:
        raise InputError(f"bad age {value!r}: at most 100 years")
    return timedelta(seconds=seconds)


class Collectable(msgspec.Struct, kw_only=True):
    artifact_id: str
    hash: str
    kind: str
    path: str
    producer_run_id: str
    created_at: datetime
    size_bytes: int = 0


class GcReport(msgspec.Struct, kw_only=True):
    artifacts: list[Collectable]
    bytes_freed: int
    removed: bool  # False: a dry run
    cutoff: datetime
    invalidated_cache_keys: list[str] = []


def object_root(path: str, content_hash: str) -> Path | None:
    """``<root>`` when ``path`` is ``<root>/_objects/<hash[:2]>/<hash>`` (bytes labctl moved in), else None."""
    p = Path(path)
    if p.name != content_hash or p.parent.name != content_hash[:2] or p.parent.parent.name != OBJECTS_DIRNAME:
        return None
    return p.parent.parent.parent


def collectable(
    conn: psycopg.Connection[Any], cutoff: datetime, *, user: str | None, stores: Sequence[Path] = ()
) -> list[Collectable]:
    """Artifacts gc may delete: ``user``'s only (None: everyone's), whose objects sit in one of ``stores``."""
    params = {"cutoff": cutoff, "external": EXTERNAL_KIND, "terminal": sorted(TERMINAL_STATES), "user": user}
    found = rows_as(conn, Collectable, QUERIES["collectable"], params)
    return [c for c in found if _in_a_store(c.path, c.hash, stores)]


def _in_a_store(path: str, content_hash: str, stores: Sequence[Path]) -> bool:
    """Whether ``path`` is an object inside one of the configured stores (nothing else is ever deleted)."""
    root = object_root(path, content_hash)
    if root is None:
        return False
    for store in stores:
        try:
            inside(store, path)
        except OutsideRoot:
            continue
        return True
    log.warning("gc: %s is not inside a configured artifact root; left alone", path)
    return False


def stores_of(config: ClusterConfig) -> list[Path]:
    """Where objects may live: each artifact root, and the ``_store`` fallback beside each output root."""
    fs = config.filesystem
    return [Path(r) for r in fs.artifact_roots.values()] + [Path(r).parent / "_store" for r in fs.output_roots.values()]


#: gc needs --force for a retention shorter than this: an artifact that young may be about to get its alias
MIN_RETENTION = timedelta(minutes=1)


def tree_size(path: str | os.PathLike[str]) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def gc(app: App, *, older_than: timedelta, remove: bool, now: datetime | None = None, force: bool = False) -> GcReport:
    """List (or, with ``remove``, delete) the bytes of artifacts nothing needs any more.

    Only the acting user's artifacts, with a retention of at least MIN_RETENTION, unless ``force``.
    """
    if older_than < MIN_RETENTION and not force:
        raise InputError(f"--older-than {older_than}: at least {MIN_RETENTION} (or --force)")
    cutoff = (now or datetime.now(UTC)) - older_than
    user = None if force else app.user
    stores = stores_of(app.config)
    if not remove:
        found = collectable(app.db.conn, cutoff, user=user, stores=stores)
        for c in found:
            c.size_bytes = tree_size(c.path)
        return GcReport(artifacts=found, bytes_freed=sum(c.size_bytes for c in found), removed=False, cutoff=cutoff)

    reason = f"gc: no alias, no unfinished reader, created before {cutoff.isoformat(timespec='seconds')}"
    key = f"gc-{uuid.uuid4().hex}"

    def decide_and_record(conn: psycopg.Connection[Any]) -> tuple[list[Collectable], list[str]]:
        # Under the append lock nobody can alias or submit against these artifacts between the check and the record.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
        projections.catch_up(conn)
        found = collectable(conn, cutoff, user=user, stores=stores)
        if not found:
            return [], []
        ids = [c.artifact_id for c in found]
        batch = [NewEvent("gc", ArtifactsCollected(artifact_ids=ids, actor=app.user, reason=reason))]
        producers = sorted({c.producer_run_id for c in found})
        keys = [r[0] for r in conn.execute(QUERIES["cache_keys_of_producers"], {"producers": producers, "ids": ids})]
        invalidated = []
        for cache_key in keys:
            state = cache.load(conn, cache_key)
            if state.state == "succeeded":  # a key being recomputed right now is left alone
                why = f"gc collected {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}"
                batch.append(
                    NewEvent(
                        cache.stream_of(cache_key), CacheInvalidated(cache_key=cache_key, reason=why), state.version
                    )
                )
                invalidated.append(cache_key)
        projections.record(conn, batch, idempotency_key=key, meta=app.meta())
        return found, invalidated

    found, invalidated = app.db.run(decide_and_record)
    freed = 0
    for c in found:
        c.size_bytes = tree_size(c.path)
        root = object_root(c.path, c.hash)
        assert root is not None  # collectable() only returns object paths
        if remove_object(root, c.hash):
            freed += c.size_bytes
    return GcReport(artifacts=found, bytes_freed=freed, removed=True, cutoff=cutoff, invalidated_cache_keys=invalidated)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
