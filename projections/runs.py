"""The ``runs`` read model: one row per run, its state and where it came from."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from events import StoredEvent
from events.queries import load_queries
from events.types import (
    CancelRequested,
    JobSubmitted,
    RunCacheHit,
    RunClaimed,
    RunCoalesced,
    RunFinished,
    RunImported,
    RunPending,
    RunStarted,
    RunStatusImported,
    RunSubmitted,
    SubmissionIntended,
)
from projections.base import Projection, State, Table

TERMINAL_STATES = frozenset(
    {
        "succeeded",
        "failed",
        "cancelled",
        "timeout",
        "oom",
        "node_fail",
        "dependency_failed",
        "unknown_terminal",
        "cache_hit",
    }
)
SUCCESS_STATES = frozenset({"succeeded", "cache_hit"})
#: every state a run can be in
RUN_STATES = TERMINAL_STATES | {"created", "submitted", "running", "awaiting_peer"}


class RunRow(msgspec.Struct, kw_only=True):
    id: str
    name: str
    user_name: str
    status: str
    executor: str
    job_id: str | None
    exit_code: int | None
    signal: int | None
    reason: str | None
    run_dir: str
    cache_key: str | None
    producer_run_id: str | None
    pipeline_id: str | None
    stage_name: str | None
    sweep_id: str | None
    sweep_index: int | None
    recipe_path: str | None
    recipe: dict[str, Any]
    repo: str | None
    repo_commit: str | None
    repo_dirty: bool | None
    agent_id: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    stream_version: int


# A rebuild has the server compute the rows from the log (queries.sql runs_rebuild), which must match
# these handlers exactly: tests/test_runs_rebuild.py compares the two.
RUNS = Table(
    "runs",
    RunRow,
    key=("id",),
    json_columns=frozenset({"recipe"}),
    rebuild_query=load_queries("projections")["runs_rebuild"],
    rebuild_parts=2,  # the one large table of a log of runs: its query is most of a replay's server CPU
)

projection = Projection("runs", [RUNS])


def _touch(row: RunRow, e: StoredEvent) -> None:
    row.updated_at = e.recorded_at
    row.stream_version = e.version


def _fresh_row(d: RunPending | RunSubmitted, e: StoredEvent, status: str) -> RunRow:
    """A run's row as its first (or a re-)submission describes it; later events fill the rest."""
    return RunRow(
        id=d.run_id,
        name=d.name,
        user_name=d.user,
        status=status,
        executor=d.executor,
        job_id=None,
        exit_code=None,
        signal=None,
        reason=None,
        run_dir=d.run_dir,
        cache_key=None,
        producer_run_id=None,
        pipeline_id=d.pipeline_id,
        stage_name=d.stage_name,
        sweep_id=d.sweep_id,
        sweep_index=d.sweep_index,
        recipe_path=d.recipe_path,
        recipe=d.recipe,
        repo=None,
        repo_commit=None,
        repo_dirty=None,
        agent_id=None,
        cancel_requested=False,
        created_at=e.recorded_at,
        started_at=None,
        finished_at=None,
        updated_at=e.recorded_at,
        stream_version=e.version,
    )


@projection.on(RunPending)
def _pending(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, RunPending)
    state.rows(RUNS).put(_fresh_row(d, e, "created"))


@projection.on(RunSubmitted)
def _submitted(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, RunSubmitted)
    rows = state.rows(RUNS)
    existing = rows.get(d.run_id)
    row = _fresh_row(d, e, "submitted")
    row.cache_key = d.cache_key
    row.repo, row.repo_commit, row.repo_dirty = d.repo, d.repo_commit, d.repo_dirty
    if existing is not None:
        # A pipeline stage submitted after waiting keeps when it was created and any cancel request.
        row.created_at = existing.created_at
        row.cancel_requested = existing.cancel_requested
    rows.put(row)


def _update(state: State, e: StoredEvent, run_id: str) -> RunRow | None:
    row = state.rows(RUNS).get(run_id)
    if row is not None:
        _touch(row, e)
        state.rows(RUNS).put(row)
    return row


@projection.on(RunCacheHit)
def _cache_hit(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, RunCacheHit)
    row = _update(state, e, d.run_id)
    if row is not None:
        row.status = "cache_hit"
        row.producer_run_id = d.producer_run_id
        row.finished_at = e.recorded_at


@projection.on(RunCoalesced)
def _coalesced(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, RunCoalesced)
    row = _update(state, e, d.run_id)
    if row is not None:
        row.status = "awaiting_peer"
        row.producer_run_id = d.producer_run_id


@projection.on(RunClaimed)
def _claimed(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, RunClaimed)
    row = _update(state, e, d.run_id)
    if row is not None:
        row.agent_id = d.agent_id


@projection.on(SubmissionIntended)
def _intended(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, SubmissionIntended)
    row = _update(state, e, d.run_id)
    if row is not None:
        row.agent_id = d.agent_id


@projection.on(JobSubmitted)
def _job(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, JobSubmitted)
    row = _update(state, e, d.run_id)
    if row is not None:
        row.job_id = d.job_id
        if d.agent_id:
            row.agent_id = d.agent_id


@projection.on(RunStarted)
def _started(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, RunStarted)
    row = _update(state, e, d.run_id)
    if row is not None and row.status not in TERMINAL_STATES:
        row.status = "running"
        row.started_at = d.started_at
        if d.job_id:
            row.job_id = d.job_id


@projection.on(RunFinished)
def _finished(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, RunFinished)
    row = _update(state, e, d.run_id)
    if row is not None:
        row.status = d.state
        row.exit_code = d.exit_code
        row.signal = d.signal
        row.reason = d.reason
        row.started_at = d.started_at or row.started_at
        row.finished_at = d.finished_at or e.recorded_at


@projection.on(CancelRequested)
def _cancel(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, CancelRequested)
    row = _update(state, e, d.run_id)
    if row is not None:
        row.cancel_requested = True


@projection.on(RunImported)
def _imported(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, RunImported)
    state.rows(RUNS).put(
        RunRow(
            id=d.run_id,
            name=d.name,
            user_name=d.user,
            status=d.status,
            executor=d.executor,
            job_id=d.job_id,
            exit_code=None,
            signal=None,
            reason=None,
            run_dir=d.run_dir,
            cache_key=d.cache_key,
            producer_run_id=d.producer_run_id,
            pipeline_id=d.pipeline_id,
            stage_name=d.stage_name,
            sweep_id=None,
            sweep_index=None,
            recipe_path=None,
            recipe=d.recipe,
            repo=d.repo,
            repo_commit=d.repo_commit,
            repo_dirty=None,
            agent_id=None,
            cancel_requested=False,
            created_at=d.created_at,
            started_at=None,
            finished_at=d.finished_at,
            updated_at=e.recorded_at,
            stream_version=e.version,
        )
    )


@projection.on(RunStatusImported)
def _status_imported(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, RunStatusImported)
    row = _update(state, e, d.run_id)
    if row is not None:
        row.status = d.status
        row.finished_at = d.finished_at
        row.job_id = d.job_id or row.job_id
