"""Pipelines, their stages, and sweeps."""

from __future__ import annotations

from datetime import datetime

import msgspec

from events import StoredEvent
from events.queries import load_queries
from events.types import PipelineCreated, PipelineFinished, PipelineImported, StageSpec, SweepCreated, SweepFinished
from projections.base import Projection, State, Table


class PipelineRow(msgspec.Struct, kw_only=True):
    id: str
    name: str
    user_name: str
    status: str
    file_path: str | None
    from_run: str | None
    reason: str | None
    created_at: datetime
    finished_at: datetime | None


class StageRow(msgspec.Struct, kw_only=True):
    pipeline_id: str
    stage_name: str
    ordinal: int
    run_ids: list[str]
    parents: list[str]


class SweepRow(msgspec.Struct, kw_only=True):
    id: str
    name: str
    user_name: str
    arg: str
    start_index: int
    end_index: int
    throttle: int | None
    run_ids: list[str]
    aggregate_run_id: str | None
    pipeline_id: str | None
    status: str
    created_at: datetime
    finished_at: datetime | None


# A rebuild has the server compute every table from the log (queries.sql), which must match these
# handlers exactly (tests/test_server_rebuild.py compares the two); the handlers project each append.
_QUERIES = load_queries("projections")
PIPELINES = Table("pipelines", PipelineRow, key=("id",), rebuild_query=_QUERIES["pipelines_rebuild"])
STAGES = Table(
    "pipeline_stages", StageRow, key=("pipeline_id", "stage_name"), rebuild_query=_QUERIES["pipeline_stages_rebuild"]
)
SWEEPS = Table("sweeps", SweepRow, key=("id",), rebuild_query=_QUERIES["sweeps_rebuild"])

projection = Projection("pipelines", [PIPELINES, STAGES, SWEEPS])


@projection.on(PipelineCreated)
def _created(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, PipelineCreated)
    state.rows(PIPELINES).put(
        PipelineRow(
            id=d.pipeline_id,
            name=d.name,
            user_name=d.user,
            status="running",
            file_path=d.file_path,
            from_run=d.from_run,
            reason=None,
            created_at=e.recorded_at,
            finished_at=None,
        )
    )
    _put_stages(state, d.pipeline_id, d.stages)


def _put_stages(state: State, pipeline_id: str, specs: list[StageSpec]) -> None:
    stages = state.rows(STAGES)
    for ordinal, s in enumerate(specs):
        stages.put(
            StageRow(
                pipeline_id=pipeline_id,
                stage_name=s.name,
                ordinal=ordinal,
                run_ids=list(s.run_ids),
                parents=list(s.parents),
            )
        )


@projection.on(PipelineFinished)
def _finished(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, PipelineFinished)
    rows = state.rows(PIPELINES)
    row = rows.get(d.pipeline_id)
    if row is not None:
        row.status = d.state
        row.reason = d.reason
        row.finished_at = e.recorded_at
        rows.put(row)


@projection.on(SweepCreated)
def _sweep(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, SweepCreated)
    state.rows(SWEEPS).put(
        SweepRow(
            id=d.sweep_id,
            name=d.name,
            user_name=d.user,
            arg=d.arg,
            start_index=d.start,
            end_index=d.end,
            throttle=d.throttle,
            run_ids=list(d.run_ids),
            aggregate_run_id=d.aggregate_run_id,
            pipeline_id=d.pipeline_id,
            status="running",
            created_at=e.recorded_at,
            finished_at=None,
        )
    )


@projection.on(SweepFinished)
def _sweep_finished(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, SweepFinished)
    rows = state.rows(SWEEPS)
    row = rows.get(d.sweep_id)
    if row is not None:
        row.status = d.state
        row.finished_at = e.recorded_at
        rows.put(row)


@projection.on(PipelineImported)
def _imported(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, PipelineImported)
    state.rows(PIPELINES).put(
        PipelineRow(
            id=d.pipeline_id,
            name=d.name,
            user_name=d.user,
            status=d.status,
            file_path=d.file_path,
            from_run=None,
            reason=None,
            created_at=d.created_at,
            finished_at=d.finished_at,
        )
    )
    _put_stages(state, d.pipeline_id, d.stages)
