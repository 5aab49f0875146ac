"""Runs on the local executor: claim a queued run (one claim per run, by the run stream's version),
render and start its job, record the start; the agent's loop drives these (beside ``slurm_runs``)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shlex
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import psycopg

import projections
from events import ConcurrencyError, NewEvent
from events.types import JobSubmitted, RunClaimed, RunStarted, RunSubmitted
from labctl import layout
from labctl.app import App
from labctl.artifacts import ContextError, hash_outputs
from labctl.executors.base import JobSpec, JobState
from labctl.executors.local import HOST, LocalExecutor
from labctl.executors.sbatch_script import local_direct_exec, render_script_body
from labctl.files import Recipe, Resources, parse_mem_mb, parse_time_seconds
from labctl.finish import finish_runs
from labctl.jobenv import job_command, job_environment, job_workdir
from labctl.packing import Capacity, Grant, Need
from labctl.submissions import submissions_of
from labctl.throttle import QUERIES, Scope, claimable_runs

log = logging.getLogger(__name__)


def claimable(app: App, scope: Scope | None, limit: int, user: str | None) -> list[tuple[str, int]]:
    """Queued local runs in submission order, within the throttle limits (and the scope, if any);
    only ``user``'s unless None (the service account)."""
    return claimable_runs(app.db.conn, app.config.throttle, limit, scope, user=user)


def needs(app: App, run_ids: list[str]) -> dict[str, Need]:
    """What each run's recipe asks of the machine (``[resources]`` cpus, mem, gpus)."""
    rows = app.db.conn.execute(QUERIES["run_resources"], {"run_ids": run_ids}).fetchall()
    return {run_id: Need.of(msgspec.convert(res or {}, Resources)) for run_id, res in rows}


def written(run_dir: str) -> bool:
    """Whether the run's submitter has finished writing its run dir (``context.json`` is written last)."""
    return (Path(run_dir) / ".lab" / "context.json").exists()


def claim_many(app: App, runs: Sequence[tuple[str, int]], agent_id: str) -> list[str]:
    """Claim queued runs (id, stream version) for ``agent_id``: the ids claimed, in order.

    All in one transaction when none was taken meanwhile; when one was (another agent claimed
    it, or it was cancelled), each is claimed on its own so the others still go to this agent.
    """

    def claims(batch: Sequence[tuple[str, int]]) -> list[NewEvent]:
        return [NewEvent(f"run-{r}", RunClaimed(run_id=r, agent_id=agent_id), v) for r, v in batch]

    if not runs:
        return []
    try:
        # the key names exactly these runs: a retry of an unanswered commit is harmless, another set is not one
        which = hashlib.sha256(",".join(r for r, _ in runs).encode()).hexdigest()[:24]
        app.record(claims(runs), f"claim-{which}-{agent_id}")
        return [r for r, _ in runs]
    except ConcurrencyError:
        if len(runs) == 1:
            return []
    return [r for r, v in runs if claim_many(app, [(r, v)], agent_id)]


def submissions(app: App, run_ids: Sequence[str]) -> dict[str, RunSubmitted]:
    """What each run promised when submitted, in one read (the runs claimed in one tick)."""
    return submissions_of(app.db.conn, run_ids)


def finish(app: App, run_id: str, outcome: JobState) -> None:
    finish_many(app, [(run_id, outcome)])


def finish_many(
    app: App,
    ends: Sequence[tuple[str, JobState]],
    then: Callable[[list[RunSubmitted]], object] | None = None,
    *,
    hash_outputs: bool = False,
    starts: Callable[[psycopg.Connection[Any]], Sequence[NewEvent]] | None = None,
    subs: Mapping[str, RunSubmitted] | None = None,
) -> None:
    """Record the ends of jobs that ended together, in one transaction (``then``, ``starts``, ``subs``: see
    ``finish_runs``).
    ``hash_outputs``: first write each succeeded run's output manifest (``hash_finished_outputs``), in the
    thread that then stores its outputs."""

    def manifest(sub: RunSubmitted) -> None:
        if sub.outputs:  # a run that declares no output has nothing to hash (nor to fsync)
            hash_finished_outputs(sub.run_id, sub.run_dir)

    finish_runs(app.db, app.config, ends, app.meta(), then, manifest if hash_outputs else None, starts, subs)


class NotStartable(Exception):
    """A claimed run that has no submission to start from."""


def start_job(
    app: App,
    executor: LocalExecutor,
    run_id: str,
    grant: Grant | None,
    capacity: Capacity | None,
    sub: RunSubmitted | None,
) -> tuple[str, str]:
    """Start a claimed run's job on the devices it was granted: its job id and run dir. ``sub``: its
    submission, read with those of the runs claimed together (no query here: the agent's job thread
    calls this, and the app's connection is its loop's)."""
    if sub is None:
        raise NotStartable(f"run {run_id} has no submission")
    recipe = msgspec.convert(sub.recipe, Recipe)
    spec = job_spec(app, run_id, sub.run_dir, recipe)
    return executor.submit(spec, grant, capacity), sub.run_dir


class Started(msgspec.Struct, frozen=True, kw_only=True):
    """A job the agent started, to record."""

    run_id: str
    job_id: str
    process_start: int | None
    gpus: tuple[str, ...] = ()
    started_at: datetime = msgspec.field(default_factory=lambda: datetime.now(UTC))


def start_events(conn: psycopg.Connection[Any], started: Sequence[Started], agent_id: str) -> list[NewEvent]:
    """The events that record jobs the agent started (their job ids, pids' start times, devices), each
    run's first expecting the version it is at now."""
    if not started:
        return []
    versions = dict(conn.execute(QUERIES["run_versions"], {"ids": [s.run_id for s in started]}).fetchall())
    batch: list[NewEvent] = []
    for s in started:
        if s.run_id not in versions:
            continue
        submitted = JobSubmitted(
            run_id=s.run_id,
            executor="local",
            job_id=s.job_id,
            agent_id=agent_id,
            process_start=s.process_start,
            gpus=list(s.gpus),
        )
        began = RunStarted(run_id=s.run_id, started_at=s.started_at, host=HOST, job_id=s.job_id)
        batch += [NewEvent(f"run-{s.run_id}", submitted, versions[s.run_id]), NewEvent(f"run-{s.run_id}", began)]
    return batch


def record_starts(app: App, started: Sequence[Started], agent_id: str) -> None:
    """Record jobs the agent started in one transaction (``start_events``; with jobs that ended meanwhile,
    the agent appends them with those ends instead: ``finish_many(starts=...)``)."""
    if not started:
        return

    def work(conn: psycopg.Connection[Any]) -> None:
        projections.record(conn, start_events(conn, started, agent_id), meta=app.meta(), savepoint=False)

    try:
        app.db.run(work)
    except ConcurrencyError:
        if len(started) == 1:
            raise
        for s in started:  # one moved on meanwhile (a cancel request): record the others on their own
            with contextlib.suppress(ConcurrencyError):
                record_starts(app, [s], agent_id)


def job_spec(app: App, run_id: str, run_dir: str, recipe: Recipe) -> JobSpec:
    """Render ``.lab/submit.sh`` for a local job and describe it."""
    lab = Path(run_dir) / ".lab"
    lab.mkdir(parents=True, exist_ok=True)
    env = job_environment(app.config, recipe, run_id, run_dir)
    command, workdir, job_id = job_command(recipe), job_workdir(run_dir, recipe), layout.local_job_id(run_id)
    body = render_script_body(
        env=env,
        modules=app.config.modules,
        command=command,
        workdir=workdir,
        labctl_bin=None,  # the agent hashes the outputs itself when the job ends
        run_dir=Path(run_dir),
        job_id_expr=shlex.quote(job_id),  # as the original's local scheduler
    )
    script = lab / "submit.sh"
    script.write_text("#!/bin/bash\n" + body)  # written either way: it is what the job runs, shown to people
    direct = local_direct_exec(
        env=env, command=command, workdir=workdir, run_dir=Path(run_dir), job_id=job_id, modules=app.config.modules
    )
    return JobSpec(
        run_id=run_id,
        run_dir=Path(run_dir),
        script=script,
        log_path=layout.job_log(run_dir, recipe.name, layout.local_job_id(run_id)),
        time_limit_seconds=parse_time_seconds(recipe.resources.time),
        job_name=run_id,
        cpus=recipe.resources.cpus,
        mem_mb=parse_mem_mb(recipe.resources.mem),
        gpus=recipe.resources.gpus,
        direct=direct,
    )


def hash_finished_outputs(run_id: str, run_dir: str) -> None:
    """Write the run's ``.lab/output_hashes.json`` here (on SLURM the job does it on the node)."""
    try:
        hash_outputs(run_dir)
    except (ContextError, OSError) as exc:
        log.warning("run %s: outputs not hashed ahead of registration: %s", run_id, exc)


def cancel_requested_jobs(app: App, agent_id: str) -> list[str]:
    """Job ids of this agent's runs whose cancellation was requested."""
    rows = app.db.conn.execute(QUERIES["cancelled_jobs"], {"agent_id": agent_id}).fetchall()
    return [r[0] for r in rows]
