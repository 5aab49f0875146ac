"""Ending a run: register its outputs (on success), record the end, release its cache key.

Files move first, then one transaction records everything: the end, the
artifacts, the links, the aliases, the cache release and the ends of every
run that coalesced onto this one.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg

import projections
from events import EventMeta, NewEvent
from events.types import RunFinished, RunSubmitted
from labctl import cache
from labctl.db import Database
from labctl.executors.base import JobState
from labctl.files import ClusterConfig
from labctl.linking import write_linked_alias_links
from labctl.metrics_ingest import ingest_quietly
from labctl.registration import Registered, missing_outputs, register_outputs
from labctl.retry import retry_on_conflict
from labctl.submissions import submission_of
from projections.runs import TERMINAL_STATES


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
            batch += cache.release(
                c, cache_key, run_id, state, outcome, registered.linked, ended_followers, cacheable=cacheable
            )
        projections.record(c, batch, idempotency_key=key, meta=meta)
        return state

    # A follower joined or the run moved on: look again.
    recorded = retry_on_conflict(lambda: db.run(attempt), what=f"record the end of {run_id}")
    for fsub in ended_followers:
        write_linked_alias_links(config, fsub.user, fsub.outputs, registered.linked)
    return recorded
