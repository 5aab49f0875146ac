"""The SLURM reactor: submit queued SLURM runs, recover interrupted submissions, reconcile with sacct.

It keeps no checkpoint: each pass starts from the read models and SLURM's own
state. sbatch is recorded intent -> effect -> record, and recovery looks a job
up by the run id it carries before submitting again; ``[dispatch.throttle]``
decides from squeue each time (held jobs are not eligible), so a pass cut short
is finished by the next.
"""

from __future__ import annotations

import getpass
import logging
import shutil
import time
from typing import TYPE_CHECKING

from labctl.executors.errors import ExecutorError
from labctl.metrics_ingest import LiveFiles
from labctl.reactors.base import Leadership
from labctl.slurm_runs import enforce_job_name_throttle, reconcile, recover_intents, submit_queued

if TYPE_CHECKING:
    from labctl.app import App

log = logging.getLogger(__name__)


class SlurmReactor:
    name = "slurm"

    def __init__(self, app: App, holder_id: str, max_interval: float, user: str | None = None) -> None:
        self.app = app
        self.holder_id = holder_id
        #: whose SLURM runs it submits and reconciles (None: every user's, as the service account)
        self.user = user
        self.name = type(self).name if user is None else f"{type(self).name}:{user}"
        self.leadership = Leadership(app.db.url, self.name)
        self.executor = app.slurm_executor(max_interval=max_interval)
        self.next_reconcile = 0.0
        self.metric_files = LiveFiles()
        # the original's [dispatch.throttle], applied on its evald cadence
        self.throttle = app.config.dispatch.throttle
        self.throttle_every = float(app.config.dispatch.evald_interval_secs)
        self.next_throttle = 0.0

    def step(self) -> bool:
        if not self.leadership.held():
            return False
        changed = bool(submit_queued(self.app, self.executor, self.holder_id, user=self.user))
        now = time.monotonic()
        if now < self.next_reconcile:
            return changed
        changed |= recover_intents(self.app, self.executor, self.holder_id, user=self.user) > 0
        report = reconcile(self.app, self.executor, self.metric_files, user=self.user)
        moved = report.started + report.finished > 0
        self.next_reconcile = now + (self.executor.next_interval(moved) if report.active else 1.0)
        if not report.accounting_ok:
            log.warning("sacct is unavailable (%s); using squeue for liveness", self.executor.last_accounting_error)
        if self.throttle is not None and now >= self.next_throttle:
            self.next_throttle = now + self.throttle_every
            try:
                held, released = enforce_job_name_throttle(self.executor, self.throttle, getpass.getuser())
            except ExecutorError as exc:
                log.warning("throttle of %s jobs: %s", self.throttle.job_name, exc)
            else:
                if held or released:
                    log.info("throttle of %s jobs: held %d, released %d", self.throttle.job_name, held, released)
        return changed or moved

    def close(self) -> None:
        self.leadership.release()


def slurm_available() -> bool:
    return shutil.which("sbatch") is not None and shutil.which("sacct") is not None
