"""The agent: a worker with a heartbeat that runs local jobs and the reactors.

Each tick it (1) ends runs held by agents whose heartbeat went stale as
``node_fail``, (2) polls its own jobs and records their ends, (3) passes
cancel requests on, (4) claims queued local runs up to its free slots (one
claim per run, by the run stream's version) and starts them, and (5) gives
each reactor a turn. It wakes on NOTIFY and at least every ``poll_interval``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import msgspec
import psycopg

import events
import projections
from events import ConcurrencyError, NewEvent
from events.types import JobSubmitted, RunClaimed, RunStarted
from labctl.app import App
from labctl.artifacts import ContextError, hash_outputs
from labctl.db import connect
from labctl.errors import DatabaseUnavailable, InputError
from labctl.executors.base import JobSpec, JobState
from labctl.executors.local import HOST, LocalExecutor, kill_orphan
from labctl.executors.sbatch_script import render_script_body
from labctl.files import Recipe, parse_mem_mb, parse_time_seconds
from labctl.finish import finish_run, submission_of
from labctl.jobenv import job_command, job_environment, job_workdir
from labctl.metrics_ingest import LiveFiles, ingest_quietly

log = logging.getLogger(__name__)


def stale_after() -> float:
    return float(os.environ.get("LABCTL_AGENT_STALE_SECONDS", "10"))


class Reactor(Protocol):
    name: str

    def step(self, agent: Agent) -> bool:
        """Do one round of work; True when something changed (the agent ticks again soon)."""
        ...


class Scope(msgspec.Struct, frozen=True):
    """What an agent started by ``--wait`` may run: these runs, pipelines or sweeps."""

    run_ids: frozenset[str] = frozenset()
    pipeline_id: str | None = None
    sweep_id: str | None = None

    def sql(self) -> tuple[str, dict[str, Any]]:
        return (
            "(id = ANY(%(scope_runs)s) OR pipeline_id = %(scope_pipeline)s OR sweep_id = %(scope_sweep)s)",
            {"scope_runs": list(self.run_ids), "scope_pipeline": self.pipeline_id, "scope_sweep": self.sweep_id},
        )


def _process_start_of(conn: psycopg.Connection[Any], run_id: str) -> int | None:
    """The start time recorded with the run's local job pid (None for jobs recorded without one)."""
    found = None
    for e in events.read_stream(conn, f"run-{run_id}"):
        if isinstance(e.data, JobSubmitted):
            found = e.data.process_start
    return found


def check_service(app: App) -> None:
    """Only the account the cluster config names as the group's service may act for every user."""
    allowed = app.config.dispatch.service_user
    if allowed is None:
        raise InputError("--service: the cluster config names no service account ([dispatch] service_user)")
    if app.user != allowed:
        raise InputError(f"--service: only {allowed} (the cluster's [dispatch] service_user) may act for every user")


def live_agents(conn: psycopg.Connection[Any], *, include_scoped: bool = False) -> list[str]:
    """Agents whose heartbeat is fresh (full agents only, unless ``include_scoped``)."""
    rows = conn.execute(
        "SELECT id FROM agents WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => %s)"
        + ("" if include_scoped else " AND scope IS NULL"),
        (stale_after(),),
    ).fetchall()
    return [r[0] for r in rows]


class Agent:
    def __init__(
        self,
        app: App,
        *,
        slots: int | None = None,
        scope: Scope | None = None,
        reactors: Sequence[Reactor] | None = None,
        poll_interval: float = 0.25,
        heartbeat_interval: float = 1.0,
        metrics_interval: float = 1.0,
        service: bool = False,
    ) -> None:
        self.app = app
        #: whose runs this agent runs, submits, reconciles and advances: its own user's, or everyone's
        #: when it is the group's service account (see SECURITY.md)
        self.serves: str | None = None if service else app.user
        self.id = f"agent_{HOST}_{os.getpid()}_{secrets.token_hex(3)}"
        self.slots = slots or app.config.local.slots or os.cpu_count() or 1
        self.scope = scope
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.local = LocalExecutor()
        self.running: dict[str, str] = {}  # job id -> run id (local jobs this agent started)
        self.ended: dict[str, tuple[str, JobState]] = {}  # jobs that ended, their end not yet recorded
        self.run_dirs: dict[str, str] = {}  # run id -> run dir of the jobs in ``running``
        self.metric_files = LiveFiles()
        self.metrics_interval = metrics_interval
        self._next_metrics = 0.0
        self.stopping = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        if reactors is None:
            from labctl.reactors import default_reactors

            reactors = default_reactors(app, self.serves)
        self.reactors = list(reactors)

    # ----------------------------------------------------------- lifecycle

    def _register(self) -> None:
        self.app.db.conn.execute(
            "INSERT INTO agents (id, host, pid, user_name, slots, scope) VALUES (%s, %s, %s, %s, %s, %s)",
            (
                self.id,
                HOST,
                os.getpid(),
                self.app.user,
                self.slots,
                msgspec.json.encode(self.scope).decode() if self.scope else None,
            ),
        )

    def _heartbeat(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self.stopping.wait(self.heartbeat_interval):
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = connect(self.app.db.url, budget=1.0)
                conn.execute("UPDATE agents SET heartbeat_at = now() WHERE id = %s", (self.id,))
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
                conn = None
        if conn is not None:
            conn.close()

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Tick until stopped (SIGTERM/SIGINT or ``until()`` returns True)."""
        self._register()
        self._heartbeat_thread = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        self._heartbeat_thread.start()
        listener: psycopg.Connection[Any] | None = None
        try:
            while not self.stopping.is_set():
                try:
                    if listener is None or listener.closed or listener.broken:
                        listener = connect(self.app.db.url)
                        listener.execute(f"LISTEN {events.CHANNEL}")
                    busy = self.tick()
                    if until is not None and until():
                        break
                    if not busy:
                        for _ in listener.notifies(timeout=self.poll_interval, stop_after=1):
                            pass
                except (psycopg.OperationalError, DatabaseUnavailable) as exc:
                    # Keep the jobs running and keep trying: the database comes back.
                    log.warning("database unavailable (%s); retrying", exc)
                    listener = None
                    self.app.db.close()
                    self.stopping.wait(0.5)
        finally:
            self.stop()
            if listener is not None:
                listener.close()

    def stop(self) -> None:
        if self.stopping.is_set() and self._heartbeat_thread is None:
            return
        self.stopping.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(5)
            self._heartbeat_thread = None
        self.local.shutdown()
        for reactor in self.reactors:
            close = getattr(reactor, "close", None)
            if close is not None:
                close()
        for run_id, state in list(self.ended.values()):
            with contextlib.suppress(Exception):
                self._finish(run_id, state)
        for job_id, run_id in list(self.running.items()):
            self._finish(run_id, JobState(job_id=job_id, state="cancelled", reason="the agent stopped"))
        with contextlib.suppress(psycopg.Error):
            self.app.db.conn.execute("UPDATE agents SET stopped_at = now() WHERE id = %s", (self.id,))

    def idle(self) -> bool:
        """Nothing left to do: no unfinished run, every reactor has read the whole log."""
        conn = self.app.db.conn
        row = conn.execute(
            "SELECT count(*) FROM runs WHERE status IN ('created', 'submitted', 'running', 'awaiting_peer') "
            "AND (%(user)s::text IS NULL OR user_name = %(user)s)",
            {"user": self.serves},
        ).fetchone()
        if row and row[0]:
            return False
        last = events.last_position(conn)
        names = [r.name for r in self.reactors if hasattr(r, "interested")]
        done = dict(
            conn.execute("SELECT name, position FROM reactor_checkpoints WHERE name = ANY(%s)", (names,)).fetchall()
        )
        return all(done.get(n, 0) >= last for n in names)

    def install_signal_handlers(self) -> None:
        def handle(signum: int, frame: object) -> None:
            self.stopping.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    # ---------------------------------------------------------------- work

    def tick(self) -> bool:
        changed = self.reap_stale_agents()
        changed |= self.poll_local()
        self.ingest_live_metrics()
        self.pass_cancels()
        # Reactors before claims: a child released by a parent that just ended is claimable this tick.
        changed |= self.react()
        changed |= self.claim_and_start()
        return changed

    def react(self) -> bool:
        changed = False
        for reactor in self.reactors:
            try:
                changed |= reactor.step(self)
            except ConcurrencyError as exc:
                log.info("reactor %s lost a race (%s); it will look again", reactor.name, exc)
                changed = True
            except psycopg.OperationalError:
                raise  # the database is away: the run loop reconnects
            except Exception:
                # A bug in one reactor must not stop the others or the jobs; it retries next tick.
                log.exception("reactor %s failed", reactor.name)
        return changed

    def _finish(self, run_id: str, outcome: JobState) -> None:
        finish_run(self.app.db, self.app.config, run_id, outcome, self.app.meta())

    def reap_stale_agents(self) -> bool:
        """End runs held by agents that stopped or whose heartbeat went stale as ``node_fail``."""
        conn = self.app.db.conn
        held = conn.execute(
            "SELECT r.id, r.job_id, a.id, r.user_name FROM runs r JOIN agents a ON a.id = r.agent_id "
            "WHERE r.executor = 'local' AND r.status IN ('submitted', 'running') AND a.id <> %s "
            "AND (a.stopped_at IS NOT NULL OR a.heartbeat_at < now() - make_interval(secs => %s))",
            (self.id, stale_after()),
        ).fetchall()
        for run_id, job_id, agent_id, user in held:
            # Any agent may record that a dead agent's run ended; only its own user's agent signals the
            # job, and only the process that still has the start time recorded with its pid.
            if job_id and user == self.app.user:
                kill_orphan(job_id, _process_start_of(conn, run_id))
            self._finish(
                run_id,
                JobState(
                    job_id=job_id or "",
                    state="node_fail",
                    reason=f"agent {agent_id} stopped without ending it",
                    finished_at=datetime.now(UTC),
                ),
            )
        conn.execute(
            "UPDATE agents SET stopped_at = now() WHERE stopped_at IS NULL AND id <> %s "
            "AND heartbeat_at < now() - make_interval(secs => %s)",
            (self.id, stale_after()),
        )
        return bool(held)

    def poll_local(self) -> bool:
        if not self.running and not self.ended:
            return False
        changed = False
        for job_id, state in self.local.poll(list(self.running)).items():
            if not state.active:
                run_id = self.running.pop(job_id)
                self.run_dirs.pop(run_id, None)
                self.metric_files.forget(run_id)
                if state.state == "succeeded":
                    self._hash_outputs(run_id)
                self.ended[job_id] = (run_id, state)
        # Record ends; one that fails (database away) stays here and is retried next tick.
        for job_id, (run_id, state) in list(self.ended.items()):
            self._finish(run_id, state)
            del self.ended[job_id]
            changed = True
            if self.ended:
                # Let the reactors see this end before the next is recorded: its children
                # should not wait for every other job that ended in the same tick.
                self.react()
        return changed

    def ingest_live_metrics(self) -> None:
        """Record the metrics lines running jobs appended (at most every ``metrics_interval``)."""
        now = time.monotonic()
        if not self.running or now < self._next_metrics:
            return
        self._next_metrics = now + self.metrics_interval
        for run_id in self.running.values():
            run_dir = self.run_dirs.get(run_id)
            if run_dir and self.metric_files.grown(run_id, run_dir):
                ingest_quietly(self.app.db.run, run_id, run_dir, self.app.meta())

    def _hash_outputs(self, run_id: str) -> None:
        """Write the run's ``.lab/output_hashes.json`` here (on SLURM the job does it on the node)."""
        try:
            hash_outputs(self._run_dir(run_id))
        except (ContextError, OSError) as exc:
            log.warning("run %s: outputs not hashed ahead of registration: %s", run_id, exc)

    def pass_cancels(self) -> None:
        if not self.running:
            return
        rows = self.app.db.conn.execute(
            "SELECT job_id FROM runs WHERE agent_id = %s AND cancel_requested AND status IN ('submitted', 'running')",
            (self.id,),
        ).fetchall()
        to_cancel = [r[0] for r in rows if r[0] in self.running]
        if to_cancel:
            self.local.cancel(to_cancel)

    def free_slots(self) -> int:
        return self.slots - len(self.running)

    def claimable(self, limit: int) -> list[tuple[str, int]]:
        """Queued local runs in submission order, within the throttle limits."""
        from labctl.throttle import claimable_runs

        scope_sql, scope_params = self.scope.sql() if self.scope else ("TRUE", {})
        return claimable_runs(
            self.app.db.conn, self.app.config.throttle, limit, scope_sql, scope_params, user=self.serves
        )

    def claim_and_start(self) -> bool:
        free = self.free_slots()
        if free <= 0:
            return False
        started = False
        for run_id, version in self.claimable(free):
            if not (Path(self._run_dir(run_id)) / ".lab" / "context.json").exists():
                continue  # the submitter is still writing the run dir
            claim = [NewEvent(f"run-{run_id}", RunClaimed(run_id=run_id, agent_id=self.id), version)]
            try:
                self.app.record(claim, f"claim-{run_id}-{self.id}")
            except ConcurrencyError:
                continue  # another agent claimed it, or it was cancelled
            self.start(run_id)
            started = True
            if self.free_slots() <= 0:
                break
        return started

    def _run_dir(self, run_id: str) -> str:
        row = self.app.db.conn.execute("SELECT run_dir FROM runs WHERE id = %s", (run_id,)).fetchone()
        return row[0] if row else ""

    def start(self, run_id: str) -> None:
        conn = self.app.db.conn
        sub = submission_of(conn, run_id)
        if sub is None:
            return
        try:
            recipe = msgspec.convert(sub.recipe, Recipe)
            spec = self.job_spec(run_id, sub.run_dir, recipe)
            job_id = self.local.submit(spec)
        except (OSError, ValueError, msgspec.ValidationError) as exc:
            self._finish(run_id, JobState(job_id="", state="failed", reason=f"could not start: {exc}"))
            return
        self.running[job_id] = run_id
        self.run_dirs[run_id] = sub.run_dir
        now = datetime.now(UTC)
        version = events.stream_version(conn, f"run-{run_id}")
        projections.record(
            conn,
            [
                NewEvent(
                    f"run-{run_id}",
                    JobSubmitted(
                        run_id=run_id,
                        executor="local",
                        job_id=job_id,
                        agent_id=self.id,
                        process_start=self.local.process_start_of(job_id),
                    ),
                    version,
                ),
                NewEvent(f"run-{run_id}", RunStarted(run_id=run_id, started_at=now, host=HOST, job_id=job_id)),
            ],
            meta=self.app.meta(),
        )

    def job_spec(self, run_id: str, run_dir: str, recipe: Recipe) -> JobSpec:
        """Render ``.lab/submit.sh`` for a local job and describe it."""
        lab = Path(run_dir) / ".lab"
        lab.mkdir(parents=True, exist_ok=True)
        body = render_script_body(
            env=job_environment(self.app.config, recipe, run_id, run_dir),
            modules=self.app.config.modules,
            command=job_command(recipe),
            workdir=job_workdir(run_dir, recipe),
            labctl_bin=None,  # the agent hashes the outputs itself when the job ends
            run_dir=Path(run_dir),
            job_id_expr='"${LABCTL_HOST}:$$"',
        )
        script = lab / "submit.sh"
        script.write_text("#!/bin/bash\n" + body)
        return JobSpec(
            run_id=run_id,
            run_dir=Path(run_dir),
            script=script,
            log_path=Path(run_dir) / "log.txt",
            time_limit_seconds=parse_time_seconds(recipe.resources.time),
            job_name=run_id,
            cpus=recipe.resources.cpus,
            mem_mb=parse_mem_mb(recipe.resources.mem),
            gpus=recipe.resources.gpus,
        )
