"""Runs on SLURM: exactly-once submission, one batched sacct per reconcile, recovery by run id.

Submission follows intent -> effect -> record: ``SubmissionIntended`` is
appended (expecting the run stream's version, so only one submitter wins),
then ``sbatch``, then ``JobSubmitted``. A submitter that dies between sbatch
and the record leaves an intent without a job id; recovery looks the job up
by the run id it carries (``--comment`` and its working directory, the run
dir; the sweep id for an array) before it would ever submit again. The SLURM
job name is the recipe's name, as the original labctl names jobs (its
``[dispatch.throttle]`` counts jobs by name). sacct is the source of truth
for state.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

import events
from events import ConcurrencyError, NewEvent
from events.queries import load_queries, rows_as
from events.types import JobSubmitted, RunStarted, RunSubmitted, SubmissionIntended
from labctl import layout
from labctl.app import App
from labctl.executors.base import JobSpec, JobState
from labctl.executors.errors import ExecutorError
from labctl.executors.sbatch_script import SHEBANG, render_sbatch_header, render_sbatch_script, render_script_body
from labctl.executors.slurm import SlurmExecutor
from labctl.files import JobNameThrottle, Recipe, Throttle, parse_mem_mb, parse_time_seconds
from labctl.finish import finish_run
from labctl.jobenv import job_command, job_environment, job_workdir, labctl_executable
from labctl.metrics_ingest import LiveFiles, ingest_quietly
from labctl.submissions import submission_of
from labctl.throttle import Scope, claimable_runs, hold_or_release

QUERIES = load_queries("labctl", "slurm.sql")

log = logging.getLogger(__name__)


class Interrupted(msgspec.Struct, frozen=True):
    """A SLURM run claimed for submission with no job id recorded yet."""

    id: str
    sweep_id: str | None
    sweep_index: int | None
    updated_at: datetime
    name: str


class ActiveJob(msgspec.Struct, frozen=True):
    """A SLURM run whose job has not ended, with its sweep's index range (a job array)."""

    id: str
    job_id: str
    status: str
    created_at: datetime
    start_index: int | None
    end_index: int | None
    run_dir: str


def slurm_job_name(recipe_name: str) -> str:
    """The SLURM job name of a recipe's runs, made as the original labctl makes it: characters other
    than letters, digits, ``_`` and ``-`` become ``_``, at most 64 of them."""
    return layout.job_name(recipe_name)


def _spec(run_id: str, run_dir: str, recipe: Recipe, *, key: str, log_path: Path, array: str | None = None) -> JobSpec:
    return JobSpec(
        run_id=run_id,
        run_dir=Path(run_dir),
        script=Path(run_dir) / ".lab" / "submit.sh",
        log_path=log_path,
        time_limit_seconds=parse_time_seconds(recipe.resources.time),
        job_name=slurm_job_name(recipe.name),
        comment=key,
        cpus=recipe.resources.cpus,
        mem_mb=parse_mem_mb(recipe.resources.mem),
        gpus=recipe.resources.gpus,
        array=array,
    )


def _render_single(app: App, sub: RunSubmitted, recipe: Recipe) -> JobSpec:
    # SLURM names the log as the original asks it to: .lab/<job name>_<job id>.log
    log_path = Path(sub.run_dir) / layout.LAB_DIRNAME / "%x_%j.log"
    spec = _spec(sub.run_id, sub.run_dir, recipe, key=sub.run_id, log_path=log_path)
    spec.script.parent.mkdir(parents=True, exist_ok=True)
    spec.script.write_text(
        render_sbatch_script(
            spec,
            resources=recipe.resources,
            slurm=app.config.slurm,
            env=job_environment(app.config, recipe, sub.run_id, sub.run_dir),
            modules=app.config.modules,
            command=job_command(recipe),
            workdir=job_workdir(sub.run_dir, recipe),
            labctl_bin=labctl_executable(),
            run_dir=Path(sub.run_dir),
        )
    )
    return spec


def _render_array(app: App, sweep_id: str, subs: list[tuple[RunSubmitted, Recipe]], throttle: int | None) -> JobSpec:
    """One array job for a sweep's points: a dispatcher that runs each point's own script in its run dir."""
    first_sub, first_recipe = subs[0]
    folder = Path(first_sub.run_dir).parent / sweep_id
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for sub, recipe in subs:
        body = render_script_body(
            env=job_environment(app.config, recipe, sub.run_id, sub.run_dir),
            modules=app.config.modules,
            command=job_command(recipe),
            workdir=job_workdir(sub.run_dir, recipe),
            labctl_bin=labctl_executable(),
            run_dir=Path(sub.run_dir),
            job_id_expr='"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        )
        script = Path(sub.run_dir) / ".lab" / "job.sh"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(SHEBANG + body)
        # the log a single job's --output=.lab/%x_%j.log would be, with the point's job id (<array id>_<index>)
        log_file = f"{layout.job_name(recipe.name)}_${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.log"
        cases.append(f"  {sub.sweep_index}) run_dir={shlex.quote(sub.run_dir)}; log={log_file} ;;")
    indices = sorted(s.sweep_index or 0 for s, _ in subs)
    array = ",".join(str(i) for i in indices) + (f"%{throttle}" if throttle else "")
    spec = msgspec.structs.replace(
        _spec(
            first_sub.run_id,
            str(folder),
            first_recipe,
            key=sweep_id,
            log_path=folder / "array-%A_%a.log",
            array=array,
        ),
        script=folder / "submit.sh",
    )
    dispatcher = "\n".join(
        [
            'case "$SLURM_ARRAY_TASK_ID" in',
            *cases,
            '  *) echo "labctl: no sweep point for index $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;',
            "esac",
            'exec bash "$run_dir/.lab/job.sh" >> "$run_dir/.lab/$log" 2>&1',
        ]
    )
    spec.script.write_text(
        SHEBANG
        + render_sbatch_header(spec, resources=first_recipe.resources, slurm=app.config.slurm)
        + dispatcher
        + "\n"
    )
    return spec


def _limits(throttle: Throttle) -> Throttle:
    # On SLURM the scarce thing is the controller's queue: limit queued + running jobs per user.
    return Throttle(
        max_running=throttle.max_running,
        max_running_per_user=throttle.max_queued_per_user or throttle.max_running_per_user,
    )


def submit_queued(
    app: App,
    executor: SlurmExecutor,
    holder: str,
    *,
    run_ids: Sequence[str] | None = None,
    limit: int = 5000,
    user: str | None = None,
) -> dict[str, str]:
    """sbatch queued SLURM runs (sweep points of one sweep as one array); returns run id -> job id.

    ``user``: only that user's runs (sbatch runs them under the caller's account); None: everyone's.
    """
    conn = app.db.conn
    queued = claimable_runs(
        conn,
        _limits(app.config.throttle),
        limit,
        Scope(run_ids=frozenset(run_ids)) if run_ids is not None else None,
        executor="slurm",
        sweep_throttle=False,
        user=user,
    )
    if not queued:
        return {}
    groups: dict[str | None, list[tuple[str, int]]] = {}
    sweeps = dict(conn.execute(QUERIES["sweeps_of_runs"], {"run_ids": [r for r, _ in queued]}).fetchall())
    for run_id, version in queued:
        groups.setdefault(sweeps.get(run_id), []).append((run_id, version))
    submitted: dict[str, str] = {}
    for sweep_id, members in groups.items():
        if sweep_id is None:
            for run_id, version in members:
                submitted |= _submit_group(app, executor, holder, None, [(run_id, version)])
        else:
            submitted |= _submit_group(app, executor, holder, sweep_id, members)
    return submitted


def _submit_group(
    app: App, executor: SlurmExecutor, holder: str, sweep_id: str | None, members: list[tuple[str, int]]
) -> dict[str, str]:
    conn = app.db.conn
    key = sweep_id or members[0][0]
    row = conn.execute(QUERIES["run_name"], {"id": members[0][0]}).fetchone()
    name = slurm_job_name(row[0] if row else key)
    intents = [
        NewEvent(f"run-{r}", SubmissionIntended(run_id=r, executor="slurm", job_name=name, agent_id=holder), v)
        for r, v in members
    ]
    try:
        app.record(intents, f"intent-{key}-{uuid.uuid4().hex}")
    except ConcurrencyError:
        return {}  # another submitter took (some of) them; the next pass sees what is left
    subs = []
    for run_id, _ in members:
        sub = submission_of(conn, run_id)
        assert sub is not None
        subs.append((sub, msgspec.convert(sub.recipe, Recipe)))
    try:
        if sweep_id:
            throttle_row = conn.execute(QUERIES["sweep_throttle"], {"id": sweep_id}).fetchone()
            spec = _render_array(app, sweep_id, subs, throttle_row[0] if throttle_row else None)
        else:
            spec = _render_single(app, subs[0][0], subs[0][1])
        base = executor.submit(spec)
    except (ExecutorError, OSError, ValueError) as exc:
        for sub, _ in subs:
            failed = JobState(job_id="", state="failed", reason=f"sbatch failed: {exc}")
            finish_run(app.db, app.config, sub.run_id, failed, app.meta())
        return {}
    return _record_jobs(
        app, holder, [(sub.run_id, f"{base}_{sub.sweep_index}" if sweep_id else base) for sub, _ in subs]
    )


def _record_jobs(app: App, holder: str, jobs: list[tuple[str, str]]) -> dict[str, str]:
    conn = app.db.conn
    batch = [
        NewEvent(
            f"run-{run_id}",
            JobSubmitted(run_id=run_id, executor="slurm", job_id=job_id, agent_id=holder),
            events.stream_version(conn, f"run-{run_id}"),
        )
        for run_id, job_id in jobs
    ]
    app.record(batch, f"jobs-{uuid.uuid4().hex}")
    return dict(jobs)


def recover_intents(app: App, executor: SlurmExecutor, holder: str, *, user: str | None = None) -> int:
    """Intents without a job id, older than the grace: find the job by the run (or sweep) id it carries,
    else submit again (``user``: only that user's runs; None: everyone's)."""
    conn = app.db.conn
    grace = timedelta(seconds=app.settings.slurm_recovery_grace)
    rows = rows_as(conn, Interrupted, QUERIES["interrupted_submissions"], {"grace": grace, "user": user})
    if not rows:
        return 0
    keys = {r.id: r.sweep_id or r.id for r in rows}  # a sweep's points are one job array, found by the sweep id
    since = min(r.updated_at for r in rows) - timedelta(minutes=5)
    found = executor.find_by_comment({keys[r.id]: slurm_job_name(r.name) for r in rows}, since=since)
    recovered = [
        (r.id, f"{found[keys[r.id]]}_{r.sweep_index}" if r.sweep_id else found[keys[r.id]])
        for r in rows
        if keys[r.id] in found
    ]
    if recovered:
        _record_jobs(app, holder, recovered)
        log.info("recovered %d SLURM job id(s) by run id after an interrupted submission", len(recovered))
    lost = [r.id for r in rows if keys[r.id] not in found and r.updated_at < datetime.now(UTC) - 4 * grace]
    if lost and not _lookup_was_complete(executor):
        lost = []  # try again next cycle
    for run_id in lost:
        # No job carries that id long after the intent: the submitter died before sbatch. Submit again.
        version = events.stream_version(conn, f"run-{run_id}")
        sub = submission_of(conn, run_id)
        if sub is None:
            continue
        try:
            app.record([NewEvent(f"run-{run_id}", sub, version)], f"resubmit-{run_id}-{version}")
        except ConcurrencyError:
            continue
    return len(recovered) + len(lost)


def _lookup_was_complete(executor: SlurmExecutor) -> bool:
    """Whether "no job by that name" can be believed: sacct answered and holds every record slurmctld sent.

    A finished job leaves squeue after MinJobAge; with slurmdbd down, or just back
    and still receiving slurmctld's queued records, sacct does not know it either.
    Resubmitting then would run the job twice.
    """
    if not executor.accounting_ok:
        return False
    backlog = executor.accounting_backlog()
    if backlog is None:
        log.warning("sdiag gave no DBD agent queue size; trusting sacct's name search as complete")
        return True
    return backlog == 0


class ReconcileReport(msgspec.Struct):
    active: int = 0
    started: int = 0
    finished: int = 0
    sacct_calls: int = 0
    accounting_ok: bool = True
    metric_points: int = 0
    ended: list[str] = []  # the runs whose end this cycle recorded


def reconcile(
    app: App, executor: SlurmExecutor, live_files: LiveFiles | None = None, *, user: str | None = None
) -> ReconcileReport:
    """One cycle: one sacct call for every active SLURM run (``user``'s only, when given); record what changed.

    Running jobs' new metrics lines are ingested too (only files that grew since ``live_files`` last
    looked; every file when it is None); a job that ended has its last lines taken as its end is recorded.
    """
    conn = app.db.conn
    rows = rows_as(conn, ActiveJob, QUERIES["active_jobs"], {"user": user})
    report = ReconcileReport(active=len(rows), accounting_ok=executor.accounting_ok)
    if not rows:
        return report  # no sacct call: accounting_ok is what this executor last saw (e.g. in recovery)
    before = executor.sacct_calls
    arrays = {
        r.job_id.split("_")[0]: f"{r.start_index}-{r.end_index}"
        for r in rows
        if "_" in r.job_id and r.start_index is not None
    }
    states = executor.poll_runs(
        [r.job_id for r in rows], since=min(r.created_at for r in rows) - timedelta(minutes=5), arrays=arrays
    )
    report.sacct_calls = executor.sacct_calls - before
    report.accounting_ok = executor.accounting_ok
    for row in rows:
        run_id, job_id, status, run_dir = row.id, row.job_id, row.status, row.run_dir
        state = states.get(job_id)
        if state is None:
            continue
        if state.state == "running" and (live_files is None or live_files.grown(run_id, run_dir)):
            report.metric_points += ingest_quietly(app.db.run, run_id, run_dir, app.meta())
        if state.state == "running" and status == "submitted":
            version = events.stream_version(conn, f"run-{run_id}")
            started = RunStarted(run_id=run_id, started_at=state.started_at or datetime.now(UTC), job_id=job_id)
            try:
                app.record([NewEvent(f"run-{run_id}", started, version)], f"started-{run_id}-{version}")
                report.started += 1
            except ConcurrencyError:
                pass
        elif not state.active and finish_run(app.db, app.config, run_id, state, app.meta()) is not None:
            report.finished += 1
            report.ended.append(run_id)
    return report


def holder_id() -> str:
    return f"cli:{socket.gethostname()}:{os.getpid()}"


def enforce_job_name_throttle(executor: SlurmExecutor, throttle: JobNameThrottle, user: str) -> tuple[int, int]:
    """The original's ``[dispatch.throttle]``: hold ``user``'s jobs named ``job_name`` beyond
    ``max_concurrent`` running-or-eligible, release held ones as slots free up; (held, released)."""
    jobs = [j for j in executor.queue_of(user) if j.name == throttle.job_name]
    to_hold, to_release = hold_or_release(jobs, throttle.max_concurrent)
    if to_hold:
        executor.hold(to_hold)
    if to_release:
        executor.release(to_release)
    return len(to_hold), len(to_release)
