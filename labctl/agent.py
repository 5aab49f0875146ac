"""The agent: a worker with a heartbeat that runs local jobs and the reactors.

Each tick it (1) ends runs held by agents whose heartbeat went stale as
``node_fail``, (2) records the starts and ends of its own jobs, (3) passes
cancel requests on, (4) gives each reactor a turn, and (5) claims queued
local runs, up to its slots ahead of what runs. Its jobs are started and reaped by a thread of their
own (``labctl.agent_jobs``): a claimed run starts the moment a slot and its resources free up, while
the loop records, in one transaction each, the starts and the ends that thread noted meanwhile.
Between ticks with nothing to do it sleeps until a NOTIFY, a word from that thread, or
``poll_interval``. The agents table lives in ``labctl.agents``, the local runs' steps in
``labctl.local_runs``; the caller chooses the reactors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg

import events
from events import ConcurrencyError, NewEvent
from events.types import RunSubmitted
from labctl import agents, local_runs
from labctl.agent_jobs import Claimed, Jobs, Noted, Wakeup
from labctl.app import App
from labctl.errors import DatabaseUnavailable
from labctl.executors.base import JobState
from labctl.executors.local import kill_orphan
from labctl.metrics_ingest import LiveFiles, ingest_quietly
from labctl.packing import Need, choose, machine_capacity
from labctl.pipelines.advance import advance_many
from labctl.reactors.advancer import Advancer
from labctl.reactors.base import Reactor
from labctl.throttle import QUERIES, Scope

log = logging.getLogger(__name__)

#: queued runs looked at per tick, oldest first, to find those that fit
CLAIM_WINDOW = 200
#: seconds between two looks for cancel requests of this agent's jobs
CANCELS_EVERY = 0.2


class Agent:
    def __init__(
        self,
        app: App,
        *,
        agent_id: str | None = None,
        slots: int | None = None,
        scope: Scope | None = None,
        reactors: Sequence[Reactor] = (),
        poll_interval: float = 0.25,
        heartbeat_interval: float = 1.0,
        metrics_interval: float = 1.0,
        service: bool = False,
    ) -> None:
        self.app = app
        #: whose runs this agent runs, submits, reconciles and advances: its own user's, or everyone's
        #: when it is the group's service account (see SECURITY.md); its reactors are built for the same
        self.serves: str | None = None if service else app.user
        self.id = agent_id or agents.new_agent_id()
        self.slots = slots or app.config.local.slots or os.cpu_count() or 1
        self.scope = scope
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.capacity = machine_capacity(app.config.local)
        self._noted = Wakeup()  # the job thread's word: a job started or ended
        self.jobs = Jobs(app, self.capacity, self.slots, self._noted.set, poll_interval)
        #: what the job thread noted and this loop has not recorded yet (kept across a failed record)
        self.unrecorded = Noted()
        #: runs whose ends were recorded in this tick with their pipelines advanced (``advance_ended``)
        self.advanced: list[str] = []
        self.metric_files = LiveFiles()
        self.metrics_interval = metrics_interval
        self._next_metrics = 0.0
        self._next_reap = 0.0
        self._next_cancels = 0.0
        self._needs: dict[str, Need] = {}  # the queued runs' last looked at (``needs_of``)
        self.stopping = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self.reactors = list(reactors)

    # ----------------------------------------------------------- lifecycle

    def _heartbeat(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self.stopping.wait(self.heartbeat_interval):
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = self.app.db.connect(budget=1.0)
                agents.beat(conn, self.id)
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
                conn = None
        if conn is not None:
            conn.close()

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Tick until stopped (SIGTERM/SIGINT or ``until()`` returns True)."""
        agents.register(self.app.db.conn, self.id, self.app.user, self.slots, self.scope)
        self.jobs.start_thread()
        self._heartbeat_thread = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        self._heartbeat_thread.start()
        listener: psycopg.Connection[Any] | None = None
        try:
            while not self.stopping.is_set():
                try:
                    if listener is None or listener.closed or listener.broken:
                        listener = self.app.db.connect()
                        listener.execute(f"LISTEN {events.CHANNEL}")
                    busy = self.tick()
                    if until is not None and until():
                        break
                    if not busy:
                        self.wait_for_work(listener)
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

    def wait_for_work(self, listener: psycopg.Connection[Any]) -> None:
        """Sleep until a NOTIFY arrives (something was appended), the job thread started or reaped a job,
        or ``poll_interval`` passes (the heartbeats of other agents, the reactors' timers)."""
        if any(True for _ in listener.notifies(timeout=0)):
            return  # arrived while the tick ran
        readable, _, _ = select.select([listener.fileno(), self._noted.fileno()], [], [], self.poll_interval)
        if listener.fileno() in readable:
            for _ in listener.notifies(timeout=0):
                pass  # read them, or the socket stays readable
        self._noted.clear()

    def stop(self) -> None:
        if self.stopping.is_set() and self._heartbeat_thread is None:
            return
        self.stopping.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(5)
            self._heartbeat_thread = None
        noted, running, never = self.jobs.stop()
        for reactor in self.reactors:
            reactor.close()
        self.unrecorded.extend(noted)
        with contextlib.suppress(Exception):
            self.record_jobs()
        for job_id, run_id in running:
            local_runs.finish(self.app, run_id, JobState(job_id=job_id, state="cancelled", reason="the agent stopped"))
        for run_id in never:
            why = "the agent stopped before starting it"
            local_runs.finish(self.app, run_id, JobState(job_id="", state="cancelled", reason=why))
        self._noted.close()
        with contextlib.suppress(psycopg.Error):
            agents.mark_stopped(self.app.db.conn, self.id)

    def idle(self) -> bool:
        """Nothing left to do: no unfinished run, every reactor has read the whole log."""
        conn = self.app.db.conn
        row = conn.execute(QUERIES["unfinished_runs_count"], {"user": self.serves}).fetchone()
        if row and row[0]:
            return False
        last = events.last_position(conn)
        names = [r.name for r in self.reactors if hasattr(r, "interested")]
        done = dict(conn.execute(QUERIES["reactor_positions"], {"names": names}).fetchall())
        return all(done.get(n, 0) >= last for n in names)

    def install_signal_handlers(self) -> None:
        def handle(signum: int, frame: object) -> None:
            self.stopping.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    # ---------------------------------------------------------------- work

    def tick(self) -> bool:
        changed = self.reap_stale_agents()
        changed |= self.record_jobs()
        self.ingest_live_metrics()
        self.pass_cancels()
        # Reactors before claims: a child released by a parent that just ended is claimable this tick.
        changed |= self.react()
        changed |= self.claim()
        return changed

    def react(self) -> bool:
        changed = False
        for reactor in self.reactors:
            try:
                changed |= reactor.step()
            except ConcurrencyError as exc:
                log.info("reactor %s lost a race (%s); it will look again", reactor.name, exc)
                changed = True
            except psycopg.OperationalError:
                raise  # the database is away: the run loop reconnects
            except Exception:
                # A bug in one reactor must not stop the others or the jobs; it retries next tick.
                log.exception("reactor %s failed", reactor.name)
        return changed

    def reap_stale_agents(self) -> bool:
        """End runs held by agents that stopped or whose heartbeat went stale as ``node_fail``.

        At most once per heartbeat interval: a heartbeat goes stale after seconds, and a busy agent
        ticks many times a second."""
        now = time.monotonic()
        if now < self._next_reap:
            return False
        self._next_reap = now + self.heartbeat_interval
        conn = self.app.db.conn
        stale_after = self.app.settings.agent_stale_seconds
        held = agents.runs_of_stale_agents(conn, self.id, stale_after)
        for run in held:
            # Any agent may record that a dead agent's run ended; only its own user's agent signals the
            # job, and only the process that still has the start time recorded with its pid.
            if run.job_id and run.user == self.app.user:
                kill_orphan(run.job_id, agents.process_start_of(conn, run.run_id))
            local_runs.finish(
                self.app,
                run.run_id,
                JobState(
                    job_id=run.job_id or "",
                    state="node_fail",
                    reason=f"agent {run.agent_id} stopped without ending it",
                    finished_at=datetime.now(UTC),
                ),
            )
        agents.mark_stale_stopped(conn, self.id, stale_after)
        return bool(held)

    def record_jobs(self) -> bool:
        """Record what the job thread noted: the starts, the runs that could not start, the ends with the
        children they release; the starts and the ends in one transaction when nothing failed to start in
        between. If recording fails (the database is away), what was not recorded stays, in order, and
        is recorded next tick."""
        self.unrecorded.extend(self.jobs.take())
        todo = self.unrecorded
        if not todo:
            return False
        if todo.unstartable or not todo.ended:
            local_runs.record_starts(self.app, todo.started, self.id)
            todo.started = []
        while todo.unstartable:
            run_id, why = todo.unstartable[0]
            local_runs.finish(self.app, run_id, JobState(job_id="", state="failed", reason=why))
            todo.unstartable.pop(0)
        if todo.ended:
            # The starts not recorded yet go first in the ends' append (a job may have started and ended
            # since the last record). Each succeeded run's manifest is written before (as a job writes its own
            # on a node), in the thread that then stores its outputs; the reactors see the ends all at once
            # right after.
            self.advanced = []
            started = todo.started

            def starts(conn: psycopg.Connection[Any]) -> list[NewEvent]:
                return local_runs.start_events(conn, started, self.id)

            local_runs.finish_many(
                self.app, todo.ended, then=self.advance_ended, hash_outputs=True, starts=starts, subs=todo.subs
            )
            todo.started = []
            for run_id, _ in todo.ended:
                self.metric_files.forget(run_id)
            todo.ended, todo.subs = [], {}
            for reactor in self.reactors:
                if isinstance(reactor, Advancer):
                    reactor.note_advanced(self.advanced)  # committed: its handling of these ends can skip them
        return True

    def advance_ended(self, ended: list[RunSubmitted]) -> None:
        """In the transaction that records this agent's jobs' ends: submit the children they release (and
        close the pipelines they finish), so that a tick's ends and their effect commit together.

        In a savepoint of its own: a failure here is logged and the ends still commit; the advancer
        reactor then handles those ends from the log, as it handles the ends others record (SLURM's,
        other agents'). Once they commit, the advancer skips them (``Advancer.note_advanced``)."""
        pipelines = sorted({s.pipeline_id for s in ended if s.pipeline_id})
        self.advanced = []
        try:
            if pipelines:
                with self.app.db.conn.transaction():
                    advance_many(self.app, pipelines, user=self.serves)
            self.advanced = [s.run_id for s in ended]
        except psycopg.OperationalError:
            raise  # the connection is gone, and the ends' transaction with it
        except Exception:
            log.exception("advancing the pipelines of ended runs failed; the advancer will")

    def ingest_live_metrics(self) -> None:
        """Record the metrics lines running jobs appended (at most every ``metrics_interval``)."""
        now = time.monotonic()
        if now < self._next_metrics:
            return
        self._next_metrics = now + self.metrics_interval
        for run_id, run_dir in self.jobs.running_runs():
            if self.metric_files.grown(run_id, run_dir):
                ingest_quietly(self.app.db.run, run_id, run_dir, self.app.meta())

    def pass_cancels(self) -> None:
        """Signal the jobs whose cancel was requested: at most every ``CANCELS_EVERY`` seconds (a busy agent
        ticks many times a second; each look is a query)."""
        now = time.monotonic()
        if now < self._next_cancels or not self.jobs.busy():
            return
        self._next_cancels = now + CANCELS_EVERY
        to_cancel = local_runs.cancel_requested_jobs(self.app, self.id)
        if to_cancel:
            self.jobs.cancel(to_cancel)

    def claim(self) -> bool:
        """Claim queued runs for the job thread to start: up to ``slots`` beyond the running jobs, as many as
        fit the machine together (``Jobs.room``). Each claim commits before its job can start."""
        room, pool = self.jobs.room()
        if room <= 0:
            return False
        # Look past the room: a job that does not fit must not stop younger ones that do.
        queued = local_runs.claimable(self.app, self.scope, max(room, CLAIM_WINDOW), self.serves)
        if not queued:
            return False
        versions = dict(queued)
        needs = self.needs_of(list(versions))
        chosen = choose(pool, [(r, needs[r]) for r in versions if r in needs], room)
        # What the chosen runs promised when submitted (the job thread starts them from it), read before their
        # claims: a run whose submitter is still writing its run dir waits; the rest are claimed together.
        subs = local_runs.submissions(self.app, chosen)
        ready = [r for r in chosen if r in subs and local_runs.written(subs[r].run_dir)]
        claimed = local_runs.claim_many(self.app, [(r, versions[r]) for r in ready], self.id)
        self.jobs.add([Claimed(run_id, needs[run_id], subs[run_id]) for run_id in claimed])
        return bool(claimed)

    def needs_of(self, run_ids: list[str]) -> dict[str, Need]:
        """What each queued run asks of the machine, read once per run while it stays queued (a queued
        run's resources do not change; each tick looks at up to ``CLAIM_WINDOW`` of them)."""
        unknown = [r for r in run_ids if r not in self._needs]
        found = {**self._needs, **(local_runs.needs(self.app, unknown) if unknown else {})}
        self._needs = {r: found[r] for r in run_ids if r in found}
        return self._needs
