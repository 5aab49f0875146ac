"""The small interface every executor implements: submit, poll many, cancel many.

The agent owns the bookkeeping (events, artifacts); an executor only talks to
the thing that runs jobs and reports what it sees in labctl's run states
(see LABCTL-FORMATS.md): ``submitted``, ``running``, ``succeeded``,
``failed``, ``cancelled``, ``timeout``, ``oom``, ``node_fail``,
``unknown_terminal``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol

import msgspec

ACTIVE_STATES = frozenset({"submitted", "running"})


class DirectExec(msgspec.Struct, frozen=True, kw_only=True):
    """What the local job script's bash ends by ``exec``ing, and the variables it has set by then, when
    nothing before that needs a shell (``sbatch_script.local_direct_exec``): the local executor starts the
    command itself, one bash fewer per job."""

    argv: tuple[str, ...]
    #: the script's exports, then PWD and OLDPWD as its ``cd`` leaves them (over the inherited environment)
    env: dict[str, str]
    cwd: Path


class JobSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything an executor needs to start one run's job."""

    run_id: str
    run_dir: Path
    script: Path  # the rendered .lab/submit.sh (bash)
    log_path: Path
    time_limit_seconds: int | None  # None: no limit (`time = "UNLIMITED"`)
    #: SLURM: the recipe's name, as the original labctl names jobs (its throttle counts jobs by name)
    job_name: str
    #: SLURM ``--comment``: the run (or sweep) id, which recovery finds a job by
    comment: str | None = None
    cpus: int = 1
    mem_mb: int = 4096
    gpus: int = 0
    array: str | None = None  # SLURM: "0-9%2" for a sweep submitted as one array
    after_ok: Sequence[str] = ()  # SLURM: job ids this one waits for (sweep aggregates)
    #: local: the script's command, started without the script's bash (None: the script runs)
    direct: DirectExec | None = None


class JobState(msgspec.Struct, frozen=True, kw_only=True):
    """What the executor knows about one job now."""

    job_id: str
    state: str
    exit_code: int | None = None
    signal: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    reason: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


class Executor(Protocol):
    name: str

    def submit(self, job: JobSpec) -> str:
        """Start the job; return its id (recorded as ``JobSubmitted``)."""
        ...

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        """The state of many jobs in one call; unknown ids are left out."""
        ...

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Ask for many jobs to stop (one call)."""
        ...
