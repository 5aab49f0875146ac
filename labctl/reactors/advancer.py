"""The pipeline advancer: when a run of a pipeline ends, advance that pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from events import StoredEvent
from labctl.pipelines import advance, running_pipelines
from labctl.reactors.base import LogReactor

if TYPE_CHECKING:
    from labctl.agent import Agent


class Advancer(LogReactor):
    name = "advancer"
    interested = frozenset({"RunFinished", "RunCacheHit", "PipelineCreated"})

    def handle(self, agent: Agent, batch: list[StoredEvent]) -> bool:
        conn = agent.app.db.conn
        run_ids = [getattr(e.data, "run_id", None) for e in batch]
        pipelines = {getattr(e.data, "pipeline_id", None) for e in batch if e.type == "PipelineCreated"}
        rows = conn.execute(
            "SELECT DISTINCT pipeline_id FROM runs WHERE id = ANY(%s) AND pipeline_id IS NOT NULL",
            ([r for r in run_ids if r],),
        ).fetchall()
        pipelines |= {r[0] for r in rows}
        ours = set(running_pipelines(conn, self.user))  # never advance (submit as) another user's pipeline
        changed = False
        for pipeline_id in sorted(p for p in pipelines if p in ours):
            changed |= advance(agent.app, pipeline_id)
        return changed

    def full_pass(self, agent: Agent) -> bool:
        changed = False
        for pipeline_id in running_pipelines(agent.app.db.conn, self.user):
            changed |= advance(agent.app, pipeline_id)
        return changed
