"""Ending a run: register its outputs (on success), record the end, release its cache key.

Files move first, then one transaction records everything: the end, the
artifacts, the links, the aliases, the cache release and the ends of every
run that coalesced onto this one.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import psycopg

import events
import projections
from events import ConcurrencyError, EventMeta, NewEvent
from events.types import (
    AliasSet,
    ArtifactRegistered,
    CacheReleased,
    OutputLinked,
    OutputSpec,
    RunFinished,
    RunSubmitted,
)
from labctl import cache
from labctl.artifacts import (
    ArtifactMeta,
    artifact_id,
    checkpoint_steps,
    dir_content_hash,
    path_identity_hash,
    read_output_hashes,
    set_alias_link,
    store_output,
)
from labctl.db import Database
from labctl.executors.base import JobState
from labctl.files import ClusterConfig
from labctl.metrics_ingest import ingest_quietly
from labctl.names import inside
from projections.runs import TERMINAL_STATES

log = logging.getLogger(__name__)

#: output type -> the artifact kind it registers as
KIND_OF_OUTPUT = {"checkpoint_stream": "checkpoint"}


class Registered(msgspec.Struct, kw_only=True):
    events: list[NewEvent]
    linked: list[tuple[str, str, str, int | None]]  # (role, artifact id, path, step)


def submission_of(conn: psycopg.Connection[Any], run_id: str) -> RunSubmitted | None:
    """The run's latest RunSubmitted (what it promised to write)."""
    found = None
    for e in events.read_stream(conn, f"run-{run_id}"):
        if isinstance(e.data, RunSubmitted):
            found = e.data
    return found


def _artifact_root(config: ClusterConfig, kind: str, output_path: str) -> Path:
    root = config.filesystem.artifact_roots.get(kind)
    return Path(root) if root else Path(output_path).parent.parent / "_store"


def register_outputs(
    conn: psycopg.Connection[Any], config: ClusterConfig, sub: RunSubmitted, *, now: datetime
) -> Registered:
    """Hash and store each finished output (files move here); return the events that record it."""
    batch: list[NewEvent] = []
    linked: list[tuple[str, str, str, int | None]] = []
    manifest = read_output_hashes(sub.run_dir) or {}
    known = {r[0] for r in conn.execute("SELECT id FROM artifacts WHERE producer_run_id = %s", (sub.run_id,))}

    def add(out: OutputSpec, kind: str, digest: str, path: str, step: int | None, metadata: dict[str, Any]) -> str:
        aid = artifact_id(digest)
        exists = (
            aid in known
            or conn.execute("SELECT 1 FROM artifacts WHERE id = %s AND removed_at IS NULL", (aid,)).fetchone()
        )
        if not exists:
            batch.append(
                NewEvent(
                    f"artifact-{aid}",
                    ArtifactRegistered(
                        artifact_id=aid,
                        hash=digest,
                        kind=kind,
                        path=path,
                        user=sub.user,
                        producer_run_id=sub.run_id,
                        metadata=metadata,
                    ),
                )
            )
        batch.append(
            NewEvent(
                f"run-{sub.run_id}",
                OutputLinked(run_id=sub.run_id, role=out.role, artifact_id=aid, path=path, step=step),
            )
        )
        linked.append((out.role, aid, path, step))
        return aid

    for out in sub.outputs:
        kind = KIND_OF_OUTPUT.get(out.type, out.type)
        base = Path(out.path)
        output_root = config.filesystem.output_roots.get(out.type)
        if output_root:
            inside(output_root, base)  # a path recorded before aliases were checked must not move anything else
        if out.type == "checkpoint_stream":
            last = None
            for step, step_path in checkpoint_steps(base, out.marker or ""):
                meta = {"step": step, "role": out.role, "producer_recipe": sub.name}
                last = add(out, kind, path_identity_hash(str(step_path)), str(step_path), step, meta)
            if last is not None:
                _alias(batch, config, sub.user, out.alias, last, kind, base)
            continue
        if out.marker and not (base / out.marker).is_file():
            log.info("run %s: output %s has no marker %s; not registered", sub.run_id, out.role, out.marker)
            continue
        if not out.marker and not (base.is_dir() and any(base.iterdir())):
            continue
        digest = manifest.get(out.role) or dir_content_hash(base)
        metadata: dict[str, Any] = {"role": out.role, "producer_recipe": sub.name}
        if out.type == "eval_result" and out.marker:
            try:
                metadata["result"] = json.loads((base / out.marker).read_text())
            except (OSError, ValueError):
                metadata["result"] = None
        root = _artifact_root(config, kind, out.path)
        aid = artifact_id(digest)
        stored = store_output(
            root,
            base,
            digest,
            ArtifactMeta(
                id=aid,
                hash=digest,
                kind=kind,
                producer_run_id=sub.run_id,
                created_by=sub.user,
                created_at=now.isoformat(),
                alias=out.alias,
                metadata=metadata,
                source_path=out.path,
            ),
        )
        add(out, kind, digest, str(stored), None, metadata)
        _alias(batch, config, sub.user, out.alias, aid, kind, stored)
    return Registered(events=batch, linked=linked)


def _alias(
    batch: list[NewEvent], config: ClusterConfig, user: str, alias: str, aid: str, kind: str, target: Path
) -> None:
    batch.append(NewEvent(f"alias-{user}/{alias}", AliasSet(user=user, alias=alias, artifact_id=aid)))
    _alias_link(config, user, alias, kind, target)


def _alias_link(config: ClusterConfig, user: str, alias: str, kind: str, target: Path) -> None:
    root = config.filesystem.artifact_roots.get(kind)
    if root:
        try:
            set_alias_link(Path(root), user, alias, target)
        except (OSError, ValueError) as exc:
            log.warning("alias link %s/%s not written: %s", user, alias, exc)


def write_linked_alias_links(
    config: ClusterConfig,
    user: str,
    outputs: Sequence[OutputSpec],
    linked: Sequence[tuple[str, str, str, int | None]],
) -> None:
    """The alias symlinks of a run whose outputs are another run's artifacts (cache hit, coalesced follower).

    They point where the producer's own alias points: the object, or a checkpoint stream's directory.
    """
    targets = {role: Path(path).parent if step is not None else Path(path) for role, _, path, step in linked}
    for out in outputs:
        if out.role in targets:
            _alias_link(config, user, out.alias, KIND_OF_OUTPUT.get(out.type, out.type), targets[out.role])


def missing_outputs(sub: RunSubmitted, registered: Registered) -> list[str]:
    """Declared outputs with a marker that a succeeded run did not write (so nothing was registered for them)."""
    roles = {role for role, *_ in registered.linked}
    missing = []
    for out in sub.outputs:
        if out.marker and out.role not in roles:
            where = f"{out.path}/<step>/{out.marker}" if out.type == "checkpoint_stream" else f"{out.path}/{out.marker}"
            missing.append(f"output {out.role} has no marker ({where})")
    return missing


def finish_run(db: Database, config: ClusterConfig, run_id: str, outcome: JobState, meta: EventMeta) -> str | None:
    """Record that ``run_id`` ended as ``outcome``; returns the recorded state (None if it had already ended)."""
    conn = db.conn
    sub = submission_of(conn, run_id)
    if sub is not None:
        # The job has stopped writing: take its last metrics lines before the end is recorded.
        ingest_quietly(db.run, run_id, sub.run_dir, meta, final=True)
    now = datetime.now(UTC)
    registered = Registered(events=[], linked=[])
    state = outcome.state
    reason = outcome.reason
    cacheable = True
    if state == "succeeded" and sub is not None:
        try:
            registered = register_outputs(conn, config, sub, now=now)
        except (OSError, ValueError) as exc:  # ValueError: a path outside its root, bytes not matching their hash
            state, reason = "failed", f"registering outputs failed: {exc}"
        missing = missing_outputs(sub, registered)
        if state == "succeeded" and missing:
            # As the original: still succeeded (exit 0), the output is not registered; and no later run
            # may cache-hit on a run that did not write what it declared.
            cacheable = False
            reason = f"exit 0 but {'; '.join(missing)}: not registered, not cached"
    key = f"finish-{run_id}-{uuid.uuid4().hex}"
    ended_followers: list[RunSubmitted] = []

    def attempt(c: psycopg.Connection[Any]) -> str | None:
        ended_followers.clear()
        row = c.execute("SELECT status, stream_version, cache_key FROM runs WHERE id = %s", (run_id,)).fetchone()
        if row is None or row[0] in TERMINAL_STATES:
            return None
        _status, version, cache_key = row
        finished = RunFinished(
            run_id=run_id,
            state=state,
            exit_code=outcome.exit_code,
            signal=outcome.signal,
            reason=reason,
            started_at=outcome.started_at,
            finished_at=outcome.finished_at or now,
        )
        batch = [NewEvent(f"run-{run_id}", finished, version), *registered.events]
        if cache_key:
            batch += release_cache_key(
                c, cache_key, run_id, state, outcome, registered, ended_followers, cacheable=cacheable
            )
        projections.record(c, batch, idempotency_key=key, meta=meta)
        return state

    for _ in range(20):
        try:
            recorded = db.run(attempt)
        except ConcurrencyError:
            continue  # a follower joined or the run moved on: look again
        for fsub in ended_followers:
            write_linked_alias_links(config, fsub.user, fsub.outputs, registered.linked)
        return recorded
    raise RuntimeError(f"could not record the end of {run_id}")


def release_cache_key(
    conn: psycopg.Connection[Any],
    key: str,
    run_id: str,
    state: str,
    outcome: JobState,
    registered: Registered,
    linked_followers: list[RunSubmitted],
    *,
    cacheable: bool = True,
) -> list[NewEvent]:
    """Release the cache key if this run produces it, and end every run waiting on it.

    Followers that now link this run's outputs are added to ``linked_followers`` (their alias links follow the commit).
    """
    from labctl.submit import link_outputs

    st = cache.load(conn, key)
    if st.state != "claimed" or st.producer != run_id:
        return []
    ok = state == "succeeded" and cacheable
    batch = [NewEvent(cache.stream_of(key), CacheReleased(cache_key=key, run_id=run_id, succeeded=ok), st.version)]
    for follower in st.followers:
        row = conn.execute("SELECT status, stream_version FROM runs WHERE id = %s", (follower,)).fetchone()
        if row is None or row[0] in TERMINAL_STATES:
            continue
        end = RunFinished(
            run_id=follower,
            state=state,
            exit_code=outcome.exit_code,
            signal=outcome.signal,
            reason=f"its peer {run_id} ended {state}",
        )
        batch.append(NewEvent(f"run-{follower}", end, row[1]))
        if ok:
            fsub = submission_of(conn, follower)
            batch += link_outputs(follower, fsub.user if fsub else "", fsub.outputs if fsub else [], registered.linked)
            if fsub is not None:
                linked_followers.append(fsub)
    return batch
