"""The agent's local jobs: a thread that starts claimed runs' jobs the moment a slot and their resources
free up, and notes each job's exit; the agent's loop records what it noted, in batches (``labctl.agent``).

The agent claims runs ahead of its free slots (a claim commits before its job can start, so a crash
leaves a claimed run that a fresh agent ends ``node_fail``, as it ends a claimed run whose start was
never recorded); this thread starts them as running jobs end, without waiting for the agent's loop
and its transactions. Which of the claimed runs start first is ``packing.choose`` on what is free: the
oldest that does not fit holds back what it needs, so a big job is not starved by small ones behind
it, and no device is given twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from events.types import RunSubmitted
from labctl import local_runs
from labctl.app import App
from labctl.executors.base import JobState
from labctl.executors.local import LocalExecutor, parse_job_id
from labctl.packing import Capacity, Grant, Need, Pool, choose

log = logging.getLogger(__name__)


class Wakeup:
    """A self-pipe: one thread's word that wakes another out of its ``select`` (readable until cleared)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def fileno(self) -> int:
        return self._read

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # full (a word is waiting already), or closed
            os.write(self._write, b"x")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._read, 4096)

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass(frozen=True)
class Claimed:
    """A run this agent claimed (committed), waiting for a slot and its resources."""

    run_id: str
    need: Need
    sub: RunSubmitted | None  # what it promised when submitted (None: read when it starts)


@dataclass
class Noted:
    """What the thread did since the agent's loop last looked, to record in that order: the starts, the
    runs that could not start, the ends (a run may start and end between two looks)."""

    started: list[local_runs.Started] = field(default_factory=list)
    unstartable: list[tuple[str, str]] = field(default_factory=list)  # run id, why
    ended: list[tuple[str, JobState]] = field(default_factory=list)
    #: the ended runs' submissions, as read when they were claimed (``finish_runs`` need not read them again)
    subs: dict[str, RunSubmitted] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.started or self.unstartable or self.ended)

    def extend(self, other: Noted) -> None:
        self.started += other.started
        self.unstartable += other.unstartable
        self.ended += other.ended
        self.subs.update(other.subs)


class Jobs:
    """The claimed runs and the running jobs of one agent, and the thread that starts and reaps them.

    Everything here is shared between that thread and the agent's loop: under ``lock``."""

    def __init__(
        self, app: App, capacity: Capacity, slots: int, notify: Callable[[], None], poll_interval: float = 0.25
    ) -> None:
        self.app = app
        #: runs are held ahead of the free slots only once the last jobs are known to be this short on
        #: average (seconds): for long jobs a claim's round trip costs nothing, and a run held ahead is one
        #: that another agent cannot take and that a crash of this one ends ``node_fail``
        self.ahead_seconds = app.settings.agent_ahead_seconds
        self.capacity = capacity
        self.slots = slots
        self.notify = notify  # wakes the agent's loop: something to record
        self.poll_interval = poll_interval  # time limits and kill escalations are checked at least this often
        self.lock = threading.Lock()
        self.local = LocalExecutor()
        self.free = Pool(capacity)  # what the running jobs leave; their grants go back as they end
        self.queue: list[Claimed] = []  # claimed, not started, in claim order
        self.starting: list[Claimed] = []  # out of the queue, their jobs being started (without the lock)
        self.grants: dict[str, Grant] = {}  # job id -> what it was given
        self.running: dict[str, str] = {}  # job id -> run id
        self.run_dirs: dict[str, str] = {}  # run id -> run dir, of the running jobs
        self.subs: dict[str, RunSubmitted] = {}  # run id -> its submission, of the running jobs
        self.exit_fds: dict[str, int] = {}  # job id -> pidfd of its process, readable once it exits
        self.durations: deque[float] = deque(maxlen=2 * slots)  # of the last jobs that ended
        self.noted = Noted()
        #: what the jobs whose ends are noted and not taken yet were given: not free to claim for yet
        self.unrecorded_needs: list[Need] = []
        self._woken = Wakeup()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ the agent's loop

    def start_thread(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="jobs", daemon=True)
        self._thread.start()

    def add(self, claimed: list[Claimed]) -> None:
        """Claimed runs (their claims committed), to start as they fit."""
        if not claimed:
            return
        with self.lock:
            self.queue += claimed
            if self._thread is None:  # no thread (stopping): nothing starts them
                return
        self.wake()

    def take(self) -> Noted:
        with self.lock:
            noted, self.noted = self.noted, Noted()
            self.unrecorded_needs = []
        return noted

    def room(self) -> tuple[int, Pool]:
        """How many more runs to claim, and the pool to choose them in: the whole machine less what the
        runs claimed and not started need (the running jobs' resources free up as they end). Runs are held
        ahead of the free slots only while the last jobs were short (``ahead_seconds``); else a slot is free
        to claim for once the end of its last job is recorded (the agent's loop takes what was noted before
        its reactors' turn and its claims), so the reactors see an end before its slot is taken again."""
        with self.lock:
            short = bool(self.durations) and sum(self.durations) / len(self.durations) < self.ahead_seconds
            if short:
                room, pool = self.slots - len(self.queue), Pool(self.capacity)
                planned = [c.need for c in self.queue]
            else:
                held = len(self.queue) + len(self.starting) + len(self.running) + len(self.unrecorded_needs)
                room, pool = self.slots - held, self.free.copy()  # the starting ones' resources are taken already
                planned = [c.need for c in self.queue] + self.unrecorded_needs
        for need in planned:
            if pool.fits(need):
                pool.take(need)
        return room, pool

    def running_runs(self) -> list[tuple[str, str]]:
        """(run id, run dir) of the running jobs."""
        with self.lock:
            return [(r, self.run_dirs[r]) for r in self.running.values() if r in self.run_dirs]

    def busy(self) -> bool:
        with self.lock:
            return bool(self.running or self.queue or self.starting)

    def cancel(self, job_ids: list[str]) -> None:
        with self.lock:
            self.local.cancel([j for j in job_ids if j in self.running])
        self.wake()

    def stop(self) -> tuple[Noted, list[tuple[str, str]], list[str]]:
        """Stop the thread and every job (``LocalExecutor.shutdown``): what was noted and not taken, the jobs
        that were still running (job id, run id), and the claimed runs never started."""
        self._stopping.set()
        if self._thread is not None:
            self.wake()
            self._thread.join(30)
            self._thread = None
        with self.lock:
            self.local.shutdown()
            running = list(self.running.items())
            never = [c.run_id for c in [*self.starting, *self.queue]]
            self.queue, self.running = [], {}
            for fd in self.exit_fds.values():
                os.close(fd)
            self.exit_fds.clear()
            noted, self.noted = self.noted, Noted()
        self._woken.close()
        return noted, running, never

    def wake(self) -> None:
        self._woken.set()

    # ------------------------------------------------------------ the thread

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                with self.lock:
                    watched = [self._woken.fileno(), *self.exit_fds.values()]
                select.select(watched, [], [], self.poll_interval)
                self._woken.clear()
                if self._stopping.is_set():
                    return
                with self.lock:
                    changed = self._reap()
                    starting = self._take_startable()
                # Started without the lock: each start waits for its process to exec, and the agent's
                # loop must not wait for that to take what was noted or to hand over claimed runs.
                if starting:
                    started = [self._start(claimed, grant) for claimed, grant in starting]
                    with self.lock:
                        self.starting = []
                        for (claimed, grant), result in zip(starting, started, strict=True):
                            self._note_start(claimed, grant, result)
                    changed = True
                if changed:
                    self.notify()
            except Exception:
                # a bug here must not leave the jobs unwatched: log it and keep going
                log.exception("the agent's job thread failed; it goes on")
                self._stopping.wait(self.poll_interval)

    def _reap(self) -> bool:
        if not self.running:
            return False
        ended = False
        for job_id, state in self.local.poll(list(self.running)).items():
            if state.active:
                continue
            run_id = self.running.pop(job_id)
            fd = self.exit_fds.pop(job_id, None)
            if fd is not None:
                os.close(fd)
            grant = self.grants.pop(job_id)
            self.free.give_back(grant)
            self.run_dirs.pop(run_id, None)
            if (sub := self.subs.pop(run_id, None)) is not None:
                self.noted.subs[run_id] = sub
            if state.started_at and state.finished_at:
                self.durations.append((state.finished_at - state.started_at).total_seconds())
            self.noted.ended.append((run_id, state))
            self.unrecorded_needs.append(grant.need)
            ended = True
        return ended

    def _take_startable(self) -> list[tuple[Claimed, Grant]]:
        """The claimed runs that fit now, oldest first (``packing.choose``), with what each is given: out of
        the queue and into ``starting``, their resources taken."""
        free = self.slots - len(self.running)
        if free <= 0 or not self.queue:
            return []
        chosen = set(choose(self.free, [(c.run_id, c.need) for c in self.queue], free))
        if not chosen:
            return []
        self.starting = [c for c in self.queue if c.run_id in chosen]
        self.queue = [c for c in self.queue if c.run_id not in chosen]
        return [(c, self.free.take(c.need)) for c in self.starting]

    def _start(self, claimed: Claimed, grant: Grant) -> tuple[str, str] | str:
        """Start one claimed run's job: its job id and run dir, or why it could not start."""
        try:
            return local_runs.start_job(self.app, self.local, claimed.run_id, grant, self.capacity, claimed.sub)
        except (OSError, ValueError, local_runs.NotStartable) as exc:
            return f"could not start: {exc}"
        except Exception as exc:  # a bug of ours: the run still ends, failed, with the reason
            log.error("run %s: starting its job failed", claimed.run_id, exc_info=exc)
            return f"could not start: {exc}"

    def _note_start(self, claimed: Claimed, grant: Grant, result: tuple[str, str] | str) -> None:
        if isinstance(result, str):
            self.free.give_back(grant)
            self.noted.unstartable.append((claimed.run_id, result))
            return
        job_id, run_dir = result
        self.running[job_id] = claimed.run_id
        self.run_dirs[claimed.run_id] = run_dir
        if claimed.sub is not None:
            self.subs[claimed.run_id] = claimed.sub
        self.grants[job_id] = grant
        self._watch_exit(job_id)
        self.noted.started.append(
            local_runs.Started(
                run_id=claimed.run_id,
                job_id=job_id,
                process_start=self.local.process_start_of(job_id),
                gpus=tuple(grant.gpu_ids),
            )
        )

    def _watch_exit(self, job_id: str) -> None:
        """A descriptor that becomes readable when the job's process exits (Linux pidfd)."""
        parsed = parse_job_id(job_id)
        if parsed is None or not hasattr(os, "pidfd_open"):
            return
        with contextlib.suppress(OSError):  # gone already (the next poll sees it ended) or no pidfd support
            self.exit_fds[job_id] = os.pidfd_open(parsed[1])
