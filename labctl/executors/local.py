"""The local executor: jobs are process groups on this machine, owned by one agent.

Each job runs ``bash .lab/submit.sh`` in its own session (so a cancel or a
time limit signals the whole group), with stdout and stderr in the run's
log; or, where that script's bash would only set variables, enter a directory
and ``exec`` the command, the command itself with those variables in that
directory. Time limits and cancels send SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from labctl.executors.base import JobSpec, JobState
from labctl.executors.sbatch_script import SHELL_STATE
from labctl.packing import Capacity, Grant, pinned, visible_devices
from labctl.secrets import job_inherited_environ

GRACE_SECONDS = 5.0
HOST = socket.gethostname()


@dataclass
class _Job:
    spec: JobSpec
    proc: subprocess.Popen[bytes]
    started: float
    started_at: datetime
    process_start: int | None  # see process_start(): recorded, so a reused pid is never signalled
    stopping: str | None = None  # "timeout" | "cancelled" once we began stopping it
    kill_at: float = 0.0


def job_id_of(pid: int) -> str:
    return f"{HOST}:{pid}"


def parse_job_id(job_id: str) -> tuple[str, int] | None:
    host, _, pid = job_id.rpartition(":")
    return (host, int(pid)) if host and pid.isdigit() else None


def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot, from /proc), or None if there is no such process."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)  # read at every job start: no file object, no decoding
    except OSError:
        return None
    try:
        stat = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # the command name (field 2) may hold spaces and parentheses: count fields after its closing ')'
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])  # field 22, starttime


def kill_orphan(job_id: str, started: int | None) -> bool:
    """Kill the process group of a job started on this host by an agent that died.

    Only if the pid still belongs to that job (same start time): pids are reused, and
    without a recorded start time nothing is signalled.
    """
    parsed = parse_job_id(job_id)
    if parsed is None or parsed[0] != HOST or started is None:
        return False
    if process_start(parsed[1]) != started:
        return False
    try:
        os.killpg(parsed[1], signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _as_bash_execs(environ: dict[str, str]) -> dict[str, str] | None:
    """The environment as the job script's bash passes it on to the command it ``exec``s (before the script's
    exports and its dirs): without ``_``, with SHLVL 0 where none was set. None when bash would do more with
    it (read a startup file, exported options or functions; rewrite a level it does not take as it is)."""
    level = environ.get("SHLVL", "0")
    plain_level = level.isdigit() and level == str(int(level)) and int(level) < 999  # bash writes back a number
    if not plain_level or not SHELL_STATE.isdisjoint(environ.keys() - {"SHLVL", "PWD", "OLDPWD"}):
        return None
    if any(name.startswith("BASH_FUNC_") for name in environ):
        return None
    return {"SHLVL": "0", **{k: v for k, v in environ.items() if k != "_"}}


def _start(argv: Sequence[str], cwd: Path, env: dict[str, str], log: BinaryIO) -> subprocess.Popen[bytes]:
    """A job's process: in its own session (a cancel or a time limit signals the whole group), output to ``log``."""
    return subprocess.Popen(
        argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


class LocalExecutor:
    name = "local"

    def __init__(self, grace_seconds: float = GRACE_SECONDS) -> None:
        self.jobs: dict[str, _Job] = {}
        self.grace = grace_seconds
        #: what every job inherits: this process's environment as it started, filtered once (each value is
        #: matched against the credential patterns); labctl sets no variable a job would inherit afterwards
        self.environ = dict(job_inherited_environ(), LABCTL_HOST=HOST)
        #: the same as the job script's bash passes it on, or None if bash would do more with it
        self.exec_environ = _as_bash_execs(self.environ)

    def submit(self, job: JobSpec, grant: Grant | None = None, capacity: Capacity | None = None) -> str:
        """Start the job; with a ``grant``, it sees only its GPUs and runs on its CPUs."""
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        devices = visible_devices(grant, capacity) if grant is not None and capacity is not None else {}
        with open(job.log_path, "ab") as log, pinned(grant.cpu_ids if grant else None):
            proc = None
            if (direct := job.direct) is not None and self.exec_environ is not None:
                # the command the script would ``exec``, in the environment its bash would give it; if it cannot
                # start (not found, not executable, no such directory), the script runs, and its bash says why
                # in the log and exits as it always did (127, 126, 1)
                with contextlib.suppress(OSError):
                    proc = _start(direct.argv, direct.cwd, {**self.exec_environ, **devices, **direct.env}, log)
            if proc is None:
                proc = _start(["bash", str(job.script)], job.run_dir, self.environ | devices, log)
        job_id = job_id_of(proc.pid)
        self.jobs[job_id] = _Job(job, proc, time.monotonic(), datetime.now(UTC), process_start(proc.pid))
        return job_id

    def process_start_of(self, job_id: str) -> int | None:
        job = self.jobs.get(job_id)
        return job.process_start if job else None

    def _signal(self, job: _Job, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.proc.pid, sig)

    def _stop(self, job: _Job, why: str) -> None:
        if job.stopping is None:
            job.stopping = why
            job.kill_at = time.monotonic() + self.grace
            self._signal(job, signal.SIGTERM)

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        states = {}
        now = time.monotonic()
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is None:
                continue
            rc = job.proc.poll()
            if rc is None:
                if (
                    job.stopping is None
                    and job.spec.time_limit_seconds is not None
                    and now - job.started > job.spec.time_limit_seconds
                ):
                    self._stop(job, "timeout")
                if job.stopping is not None and now >= job.kill_at:
                    self._signal(job, signal.SIGKILL)
                states[job_id] = JobState(job_id=job_id, state="running", started_at=job.started_at)
                continue
            states[job_id] = self._final(job_id, job, rc)
            del self.jobs[job_id]
        return states

    def _final(self, job_id: str, job: _Job, rc: int) -> JobState:
        finished = datetime.now(UTC)
        sig = -rc if rc < 0 else (rc - 128 if rc > 128 else None)
        exit_code = rc if rc >= 0 else None
        if job.stopping == "timeout":
            state, reason = "timeout", f"time limit of {job.spec.time_limit_seconds}s reached"
        elif job.stopping == "cancelled":
            state, reason = "cancelled", "cancelled on request"
        elif rc == 0:
            state, reason = "succeeded", None
        else:
            state, reason = "failed", f"exit code {rc}" if rc > 0 else f"killed by signal {sig}"
        return JobState(
            job_id=job_id,
            state=state,
            exit_code=exit_code,
            signal=sig,
            started_at=job.started_at,
            finished_at=finished,
            reason=reason,
        )

    def cancel(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is not None:
                self._stop(job, "cancelled")

    def running(self) -> list[str]:
        return list(self.jobs)

    def shutdown(self) -> None:
        """Stop every job (the agent is going away cleanly)."""
        for job in self.jobs.values():
            self._stop(job, "cancelled")
        deadline = time.monotonic() + self.grace
        for job in self.jobs.values():
            remaining = max(0.0, deadline - time.monotonic())
            try:
                job.proc.wait(remaining)
            except subprocess.TimeoutExpired:
                self._signal(job, signal.SIGKILL)
                job.proc.wait()
