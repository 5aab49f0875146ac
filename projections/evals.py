"""Evals: which checkpoint was evaluated by which run, and the metrics it recorded."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from events import StoredEvent
from events.queries import load_queries
from events.types import EvalImported, EvalRecorded, EvalRequested
from projections.base import Projection, State, Table


class EvalRow(msgspec.Struct, kw_only=True):
    eval_key: str
    policy: str
    checkpoint_artifact_id: str
    eval_recipe_hash: str
    run_id: str
    step: int | None
    metrics: dict[str, Any] | None
    requested_at: datetime
    recorded_at: datetime | None


# A rebuild has the server compute the table from the log (queries.sql), which must match these
# handlers exactly (tests/test_server_rebuild.py compares the two); the handlers project each append.
EVALS = Table(
    "evals",
    EvalRow,
    key=("eval_key",),
    json_columns=frozenset({"metrics"}),
    rebuild_query=load_queries("projections")["evals_rebuild"],
)

projection = Projection("evals", [EVALS])


@projection.on(EvalRequested)
def _requested(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, EvalRequested)
    state.rows(EVALS).put(
        EvalRow(
            eval_key=d.eval_key,
            policy=d.policy,
            checkpoint_artifact_id=d.checkpoint_artifact_id,
            eval_recipe_hash=d.eval_recipe_hash,
            run_id=d.run_id,
            step=d.step,
            metrics=None,
            requested_at=e.recorded_at,
            recorded_at=None,
        )
    )


@projection.on(EvalRecorded)
def _recorded(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, EvalRecorded)
    rows = state.rows(EVALS)
    row = rows.get(d.eval_key)
    if row is not None:
        row.metrics = d.metrics
        row.recorded_at = e.recorded_at
        rows.put(row)


@projection.on(EvalImported)
def _imported(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, EvalImported)
    state.rows(EVALS).put(
        EvalRow(
            eval_key=d.eval_key,
            policy=d.policy,
            checkpoint_artifact_id=d.checkpoint_artifact_id,
            eval_recipe_hash=d.eval_recipe_hash,
            run_id=d.run_id or "",  # the original had not yet claimed a run for it
            step=d.step,
            metrics=d.metrics,
            requested_at=d.requested_at,
            recorded_at=d.updated_at if d.metrics is not None else None,
        )
    )
