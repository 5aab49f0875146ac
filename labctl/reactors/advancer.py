"""The pipeline advancer: when a run of a pipeline ends, advance that pipeline."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from events import StoredEvent
from events.types import RunFinished
from labctl.pipelines.advance import QUERIES, advance_many, running_pipelines
from labctl.reactors.base import LogReactor

if TYPE_CHECKING:
    from labctl.app import App


#: ends noted as advanced already that are kept, at most, until the advancer reads them (a hint only)
NOTED_MAX = 10_000


class Advancer(LogReactor):
    name = "advancer"
    interested = frozenset({"RunFinished", "RunCacheHit", "PipelineCreated"})

    def __init__(self, app: App, user: str | None = None) -> None:
        super().__init__(app, user)
        #: runs whose end was recorded with its pipeline advanced in the same transaction (the agent's own
        #: jobs): their RunFinished needs nothing more. Only a hint: handling one again finds nothing to do.
        self.advanced: set[str] = set()

    def note_advanced(self, run_ids: Iterable[str]) -> None:
        """Ends whose pipelines were advanced in the transaction that recorded them (see ``advanced``)."""
        if len(self.advanced) > NOTED_MAX:
            self.advanced.clear()  # ends this agent's advancer will never read (another agent leads it)
        self.advanced.update(run_ids)

    def handle(self, batch: list[StoredEvent]) -> bool:
        conn = self.app.db.conn
        skipped = {e.data.run_id for e in batch if isinstance(e.data, RunFinished) and e.data.run_id in self.advanced}
        self.advanced -= skipped
        batch = [e for e in batch if not (isinstance(e.data, RunFinished) and e.data.run_id in skipped)]
        if not batch:
            return False
        run_ids = [getattr(e.data, "run_id", None) for e in batch]
        pipelines = {getattr(e.data, "pipeline_id", None) for e in batch if e.type == "PipelineCreated"}
        rows = conn.execute(QUERIES["pipelines_of_runs"], {"ids": [r for r in run_ids if r]}).fetchall()
        pipelines |= {r[0] for r in rows}
        return advance_many(self.app, sorted(p for p in pipelines if p), user=self.user)

    def full_pass(self) -> bool:
        return advance_many(self.app, running_pipelines(self.app.db.conn, self.user), user=self.user)
