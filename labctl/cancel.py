"""Asking runs to stop: queued or waiting ones end at once, running ones are signalled by their holder."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec

from events import NewEvent
from events.queries import load_queries
from events.types import CancelRequested, RunFinished
from labctl import cache
from labctl.app import App
from labctl.errors import UserError
from labctl.executors.base import JobState
from labctl.retry import retry_on_conflict
from projections.runs import TERMINAL_STATES

QUERIES = load_queries("labctl", "runs.sql")


class CancelResult(msgspec.Struct):
    run_id: str
    outcome: str  # "cancelled" | "requested" | "already ended"


def cancel_runs(app: App, run_ids: Sequence[str], *, force: bool, reason: str | None = None) -> list[CancelResult]:
    """Cancel runs: queued or waiting ones end now; running ones are asked to stop (the agent acts)."""
    results = []
    slurm_jobs: list[str] = []
    for run_id in run_ids:
        results.append(_cancel_one(app, run_id, force=force, reason=reason, slurm_jobs=slurm_jobs))
    if slurm_jobs:
        app.slurm_executor().cancel(slurm_jobs)  # one scancel for all of them
    return results


def _cancel_one(app: App, run_id: str, *, force: bool, reason: str | None, slurm_jobs: list[str]) -> CancelResult:
    # It moved on (claimed, started) between the look and the record: look again.
    return retry_on_conflict(
        lambda: _try_cancel(app, run_id, force=force, reason=reason, slurm_jobs=slurm_jobs), what=f"cancel {run_id}"
    )


def _try_cancel(app: App, run_id: str, *, force: bool, reason: str | None, slurm_jobs: list[str]) -> CancelResult:
    conn = app.db.conn
    row = conn.execute(QUERIES["run_to_cancel"], {"id": run_id}).fetchone()
    if row is None:
        raise UserError(f"no run {run_id!r}")
    status, owner, version, agent_id, job_id, executor, cache_key = row
    if status in TERMINAL_STATES:
        return CancelResult(run_id, "already ended")
    if owner != app.user and not force:
        raise UserError(f"{run_id} belongs to {owner}; use --force to cancel someone else's run")
    request = CancelRequested(run_id=run_id, actor=app.user, forced=owner != app.user, reason=reason)
    batch = [NewEvent(f"run-{run_id}", request, version)]
    held = status == "running" or agent_id is not None or job_id is not None
    if not held:
        end = RunFinished(
            run_id=run_id,
            state="cancelled",
            reason=reason or f"cancelled by {app.user}",
            finished_at=datetime.now(UTC),
        )
        batch.append(NewEvent(f"run-{run_id}", end))
        if cache_key:  # a queued producer gives its cache key back, or identical runs would wait on it forever
            ended = JobState(job_id="", state="cancelled", reason=end.reason)
            batch += cache.release(conn, cache_key, run_id, "cancelled", ended, [], [])
    key = f"cancel-{run_id}-{uuid.uuid4().hex}"
    app.record(batch, key)
    if held and executor == "slurm" and job_id:
        slurm_jobs.append(job_id)
    return CancelResult(run_id, "requested" if held else "cancelled")
