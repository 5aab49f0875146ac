"""What an import from an original labctl registry brought beyond the shared read models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from events import StoredEvent
from events.queries import load_queries
from events.types import (
    ArtifactImported,
    EvalImported,
    OriginalEventsImported,
    RunImported,
    RunStatusImported,
    UserImported,
)
from projections.base import Projection, State, Table


class ImportedRunRow(msgspec.Struct, kw_only=True):
    run_id: str
    recipe_hash: str
    source_path: str
    context: dict[str, Any]
    dependency_on: dict[str, Any] | None
    tracking: dict[str, Any] | None
    original_status: str
    original_events: int
    last_event_id: int | None


class UserRow(msgspec.Struct, kw_only=True):
    name: str
    pg_role: str | None
    created_at: datetime


class ImportedEvalRow(msgspec.Struct, kw_only=True):
    eval_key: str
    state: str
    attempts: int
    user_name: str
    updated_at: datetime


class ImportedArtifactRow(msgspec.Struct, kw_only=True):
    artifact_id: str
    integrity: str
    observed_hash: str | None
    alias_segment: str | None


# A rebuild has the server compute every table from the log (queries.sql), which must match these
# handlers exactly (tests/test_server_rebuild.py compares the two); the handlers project each append.
_QUERIES = load_queries("projections")
IMPORTED_RUNS = Table(
    "imported_runs",
    ImportedRunRow,
    key=("run_id",),
    json_columns=frozenset({"context", "dependency_on", "tracking"}),
    rebuild_query=_QUERIES["imported_runs_rebuild"],
)
USERS = Table("users", UserRow, key=("name",), rebuild_query=_QUERIES["users_rebuild"])
IMPORTED_EVALS = Table(
    "imported_evals", ImportedEvalRow, key=("eval_key",), rebuild_query=_QUERIES["imported_evals_rebuild"]
)
IMPORTED_ARTIFACTS = Table(
    "imported_artifacts",
    ImportedArtifactRow,
    key=("artifact_id",),
    rebuild_query=_QUERIES["imported_artifacts_rebuild"],
)

projection = Projection("imports", [IMPORTED_RUNS, USERS, IMPORTED_EVALS, IMPORTED_ARTIFACTS])


def _tracking(link: Any) -> dict[str, Any] | None:
    return msgspec.to_builtins(link) if link is not None else None


@projection.on(RunImported)
def _run(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, RunImported)
    state.rows(IMPORTED_RUNS).put(
        ImportedRunRow(
            run_id=d.run_id,
            recipe_hash=d.recipe_hash,
            source_path=d.source_path,
            context=d.context,
            dependency_on=d.dependency_on,
            tracking=_tracking(d.tracking),
            original_status=d.status,
            original_events=0,
            last_event_id=None,
        )
    )


@projection.on(RunStatusImported)
def _status(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, RunStatusImported)
    rows = state.rows(IMPORTED_RUNS)
    row = rows.get(d.run_id)
    if row is not None:
        row.original_status = d.status
        if d.tracking is not None:
            row.tracking = _tracking(d.tracking)
        rows.put(row)


@projection.on(OriginalEventsImported)
def _history(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, OriginalEventsImported)
    if d.run_id is None or not d.events:
        return
    rows = state.rows(IMPORTED_RUNS)
    row = rows.get(d.run_id)
    if row is not None:
        row.original_events += len(d.events)
        row.last_event_id = max(ev.id for ev in d.events)
        rows.put(row)


@projection.on(UserImported)
def _user(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, UserImported)
    state.rows(USERS).put(UserRow(name=d.name, pg_role=d.pg_role, created_at=d.created_at))


@projection.on(EvalImported)
def _eval(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, EvalImported)
    state.rows(IMPORTED_EVALS).put(
        ImportedEvalRow(
            eval_key=d.eval_key, state=d.state, attempts=d.attempts, user_name=d.user, updated_at=d.updated_at
        )
    )


@projection.on(ArtifactImported)
def _artifact(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, ArtifactImported)
    state.rows(IMPORTED_ARTIFACTS).put(
        ImportedArtifactRow(
            artifact_id=d.artifact_id,
            integrity=d.integrity,
            observed_hash=d.observed_hash,
            alias_segment=d.alias_segment,
        )
    )
