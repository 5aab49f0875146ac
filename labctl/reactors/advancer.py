"""The pipeline advancer: when a run of a pipeline ends, advance that pipeline."""

from __future__ import annotations

from events import StoredEvent
from labctl.pipelines.advance import QUERIES, advance_many, running_pipelines
from labctl.reactors.base import LogReactor


class Advancer(LogReactor):
    name = "advancer"
    interested = frozenset({"RunFinished", "RunCacheHit", "PipelineCreated"})

    def handle(self, batch: list[StoredEvent]) -> bool:
        conn = self.app.db.conn
        run_ids = [getattr(e.data, "run_id", None) for e in batch]
        pipelines = {getattr(e.data, "pipeline_id", None) for e in batch if e.type == "PipelineCreated"}
        rows = conn.execute(QUERIES["pipelines_of_runs"], {"ids": [r for r in run_ids if r]}).fetchall()
        pipelines |= {r[0] for r in rows}
        return advance_many(self.app, sorted(p for p in pipelines if p), user=self.user)

    def full_pass(self) -> bool:
        return advance_many(self.app, running_pipelines(self.app.db.conn, self.user), user=self.user)
