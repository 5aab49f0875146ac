"""evald: evaluate new checkpoints per the cluster's eval policies; record eval metrics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from events import StoredEvent
from events.types import ArtifactRegistered, RunFinished
from labctl.evals import policies, record_metrics, request_evals
from labctl.reactors.base import LogReactor

if TYPE_CHECKING:
    from labctl.app import App


class Evald(LogReactor):
    name = "evald"
    interested = frozenset({"ArtifactRegistered", "RunFinished"})

    def __init__(self, app: App, interval: float, user: str | None = None) -> None:
        super().__init__(app, user)
        self.full_pass_every = interval
        self._policies_loaded = 0.0

    def _policies(self) -> list:  # type: ignore[type-arg]
        # Re-read the policy files now and then, so edits apply without restarting agents.
        if time.monotonic() - self._policies_loaded > 30:
            self._cached = policies(self.app)
            self._policies_loaded = time.monotonic()
        return self._cached

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
