"""The pipeline advancer: when a run of a pipeline ends, advance that pipeline."""

from __future__ import annotations

from events import StoredEvent
from labctl.pipelines.advance import QUERIES, advance, running_pipelines
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
        ours = set(running_pipelines(conn, self.user))  # never advance (submit as) another user's pipeline
        changed = False
        for pipeline_id in sorted(p for p in pipelines if p in ours):
            changed |= advance(self.app, pipeline_id)
        return changed

    def full_pass(self) -> bool:
        changed = False
        for pipeline_id in running_pipelines(self.app.db.conn, self.user):
            changed |= advance(self.app, pipeline_id)
        return changed
