"""evald: evaluate new checkpoints per the cluster's eval policies; record eval metrics."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from events import StoredEvent
from events.types import ArtifactRegistered, RunFinished
from labctl.errors import UserError
from labctl.evals import policies, record_metrics, refuse_if_never_runs, request_evals
from labctl.files import EvalPolicy
from labctl.reactors.base import LogReactor

if TYPE_CHECKING:
    from labctl.app import App

log = logging.getLogger(__name__)


class Evald(LogReactor):
    name = "evald"
    interested = frozenset({"ArtifactRegistered", "RunFinished"})

    def __init__(self, app: App, interval: float, user: str | None = None) -> None:
        super().__init__(app, user)
        self.full_pass_every = interval
        self._policies_loaded = 0.0
        self._refused: set[str] = set()

    def _policies(self) -> list[EvalPolicy]:
        # Re-read the policy files now and then, so edits apply without restarting agents.
        if time.monotonic() - self._policies_loaded > 30:
            self._cached = [p for p in policies(self.app) if self._runnable(p)]
            self._policies_loaded = time.monotonic()
        return self._cached

    def _runnable(self, policy: EvalPolicy) -> bool:
        """False for a policy whose evals could never start here: said once, then skipped (not retried)."""
        try:
            refuse_if_never_runs(self.app, policy)
        except UserError as exc:
            if policy.name not in self._refused:
                log.warning("evald: skipping %s", exc)
                self._refused.add(policy.name)
            return False
        self._refused.discard(policy.name)
        return True

    def handle(self, batch: list[StoredEvent]) -> bool:
        checkpoints = [
            e.data.artifact_id
            for e in batch
            if isinstance(e.data, ArtifactRegistered) and e.data.kind in {p.applies_to.type for p in self._policies()}
        ]
        changed = False
        if checkpoints:
            for policy in self._policies():
                changed |= bool(request_evals(self.app, policy, checkpoints, user=self.user).run_ids)
        ended = [e.data.run_id for e in batch if isinstance(e.data, RunFinished)]
        if ended:
            changed |= record_metrics(self.app, ended) > 0
        return changed

    def full_pass(self) -> bool:
        changed = False
        for policy in self._policies():
            changed |= bool(request_evals(self.app, policy, user=self.user).run_ids)
        return changed
