"""Ending a run: register its outputs (on success), record the end, release its cache key.

Files move first, then one transaction records everything: the end, the
artifacts, the links, the aliases, the cache release and the ends of every
run that coalesced onto this one.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg

import projections
from events import EventMeta, NewEvent
from events.queries import load_queries
from events.types import RunFinished, RunSubmitted
from labctl import cache, fanout
from labctl.db import Database
from labctl.executors.base import JobState
from labctl.files import ClusterConfig
from labctl.linking import write_linked_alias_links
from labctl.metrics_ingest import ingest_quietly
from labctl.registration import (
    OutputPlan,
    Registered,
    missing_outputs,
    record_outputs,
    registered_artifacts,
    store_files,
)
from labctl.retry import retry_on_conflict
from labctl.submissions import submissions_of
from projections.runs import TERMINAL_STATES

QUERIES = load_queries("labctl", "runs.sql")


class _Ending(msgspec.Struct, kw_only=True):
    """One run's end, ready to record: its outputs registered (files moved), its state decided."""

    run_id: str
    outcome: JobState
    state: str
    reason: str | None
    cacheable: bool
    registered: Registered


#: file work on a succeeded run's dir before its outputs are stored (the agent writes its output manifest)
BeforeStore = Callable[[RunSubmitted], None]


def _store(
    config: ClusterConfig, end: tuple[_Ending, RunSubmitted | None], now: datetime, before: BeforeStore | None
) -> list[OutputPlan] | None:
    """A succeeded run's outputs moved into the store (files only: runs of one tick do this in threads)."""
    ending, sub = end
    if ending.state != "succeeded" or sub is None:
        return None
    if before is not None:
        before(sub)
    return store_files(config, sub, now=now)


def _prepare(
    db: Database,
    config: ClusterConfig,
    ends: Sequence[tuple[str, JobState]],
    meta: EventMeta,
    subs: dict[str, RunSubmitted],
    before: BeforeStore | None = None,
) -> list[_Ending]:
    """What has to happen before the ends' transaction: last metrics, outputs moved into the store."""
    endings = []
    for run_id, outcome in ends:
        sub = subs.get(run_id)
        if sub is not None:
            # The job has stopped writing: take its last metrics lines before the end is recorded.
            ingest_quietly(db.run, run_id, sub.run_dir, meta, final=True)
        endings.append(
            _Ending(
                run_id=run_id,
                outcome=outcome,
                state=outcome.state,
                reason=outcome.reason,
                cacheable=True,
                registered=Registered(events=[], linked=[]),
            )
        )
    now = datetime.now(UTC)
    pairs = [(e, subs.get(e.run_id)) for e in endings]
    # ValueError: a path outside its root, bytes not matching their hash
    # (each run's writes end in fsyncs; in one round of threads, the runs' fsyncs share journal commits)
    stored = fanout.each(lambda end: _store(config, end, now, before), pairs, (OSError, ValueError))
    known = registered_artifacts(db.conn, [p for plans in stored if isinstance(plans, list) for p in plans])
    for (ending, sub), plans in zip(pairs, stored, strict=True):
        if sub is None or ending.state != "succeeded":
            continue
        try:
            if isinstance(plans, Exception):
                raise plans
            ending.registered = record_outputs(db.conn, config, sub, plans or [], known)
        except (OSError, ValueError) as exc:
            ending.state, ending.reason = "failed", f"registering outputs failed: {exc}"
        missing = missing_outputs(sub, ending.registered)
        if ending.state == "succeeded" and missing:
            # As the original: still succeeded (exit 0), the output is not registered; and no later run
            # may cache-hit on a run that did not write what it declared.
            ending.cacheable = False
            ending.reason = f"exit 0 but {'; '.join(missing)}: not registered, not cached"
    return endings


def finish_run(db: Database, config: ClusterConfig, run_id: str, outcome: JobState, meta: EventMeta) -> str | None:
    """Record that ``run_id`` ended as ``outcome``; returns the recorded state (None if it had already ended)."""
    return finish_runs(db, config, [(run_id, outcome)], meta)[0]


def finish_runs(
    db: Database,
    config: ClusterConfig,
    ends: Sequence[tuple[str, JobState]],
    meta: EventMeta,
    then: Callable[[list[RunSubmitted]], object] | None = None,
    before_store: BeforeStore | None = None,
    starts: Callable[[psycopg.Connection[Any]], Sequence[NewEvent]] | None = None,
    known: Mapping[str, RunSubmitted] | None = None,
) -> list[str | None]:
    """Record the ends of several runs in one transaction (an agent's jobs that ended in one tick).

    Each run's outputs are registered first (files moved); then one transaction records every end,
    artifact, link, alias and cache release. Returns each run's recorded state (None: it had already
    ended). A conflict (a follower joined, a run moved on) repeats the transaction, re-reading them all.
    ``then``: called in that transaction, after the record, with the submissions of the runs it ended
    (the followers that ended with their producer too), e.g. to submit the children those ends release.
    ``before_store``: called on each succeeded run, in the thread that stores its outputs, before that.
    ``starts``: called in that transaction before the ends are read, for events to append first in the
    same append (the agent's jobs' starts: a job may have started and ended since the last record); a run's
    end then expects the version after them. ``known``: submissions of these runs read already (the agent's,
    when it claimed them); the others are read here.
    """
    if not ends:
        return []
    subs = {run_id: known[run_id] for run_id, _ in ends if run_id in known} if known else {}
    if unknown := [run_id for run_id, _ in ends if run_id not in subs]:
        subs |= submissions_of(db.conn, unknown)
    endings = _prepare(db, config, ends, meta, subs, before_store)
    now = datetime.now(UTC)
    key = f"finish-{endings[0].run_id}-{uuid.uuid4().hex}"
    ended_followers: list[tuple[RunSubmitted, _Ending]] = []

    def attempt(c: psycopg.Connection[Any]) -> list[str | None]:
        ended_followers.clear()
        batch: list[NewEvent] = list(starts(c)) if starts is not None else []
        ahead = Counter(n.stream for n in batch)  # events of a run's stream appended before its end
        rows = {r[0]: r[1:] for r in c.execute(QUERIES["runs_to_finish"], {"ids": [e.run_id for e in endings]})}
        states = cache.load_many(c, [row[2] for row in rows.values() if row[2]])
        recorded: list[str | None] = []
        for e in endings:
            row = rows.get(e.run_id)
            if row is None or row[0] in TERMINAL_STATES:
                recorded.append(None)
                continue
            _status, version, cache_key = row
            finished = RunFinished(
                run_id=e.run_id,
                state=e.state,
                exit_code=e.outcome.exit_code,
                signal=e.outcome.signal,
                reason=e.reason,
                started_at=e.outcome.started_at,
                finished_at=e.outcome.finished_at or now,
            )
            stream = f"run-{e.run_id}"
            batch += [NewEvent(stream, finished, version + ahead[stream]), *e.registered.events]
            if cache_key:
                followers: list[RunSubmitted] = []
                batch += cache.release(
                    c,
                    cache_key,
                    e.run_id,
                    e.state,
                    e.outcome,
                    e.registered.linked,
                    followers,
                    cacheable=e.cacheable,
                    st=states[cache_key],  # as load() would read it: the batch is appended after
                )
                ended_followers.extend((f, e) for f in followers)
            recorded.append(e.state)
        if batch:
            projections.record(c, batch, idempotency_key=key, meta=meta, savepoint=False)
            if then is not None:
                ended = [
                    subs[e.run_id] for e, state in zip(endings, recorded, strict=True) if state and e.run_id in subs
                ]
                then([*ended, *(f for f, _ in ended_followers)])
        return recorded

    what = f"record the end of {endings[0].run_id}" + (f" and {len(endings) - 1} more" if len(endings) > 1 else "")
    recorded = retry_on_conflict(lambda: db.run(attempt), what=what)
    for fsub, e in ended_followers:
        write_linked_alias_links(config, fsub.user, fsub.outputs, e.registered.linked)
    return recorded
