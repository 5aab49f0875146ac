"""Artifacts, aliases, and which runs read and wrote them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from events import StoredEvent
from events.queries import load_queries
from events.types import (
    AliasImported,
    AliasRemoved,
    AliasSet,
    ArtifactImported,
    ArtifactRegistered,
    ArtifactsCollected,
    InputRef,
    OutputLinked,
    RunImported,
    RunSubmitted,
)
from projections.base import Projection, State, Table


class ArtifactRow(msgspec.Struct, kw_only=True):
    id: str
    hash: str
    kind: str
    path: str
    user_name: str
    producer_run_id: str | None
    size_bytes: int | None
    metadata: dict[str, Any]
    created_at: datetime
    removed_at: datetime | None


class AliasRow(msgspec.Struct, kw_only=True):
    user_name: str
    alias: str
    artifact_id: str
    set_at: datetime


class RunOutputRow(msgspec.Struct, kw_only=True):
    run_id: str
    artifact_id: str
    role: str
    path: str
    step: int | None


class RunInputRow(msgspec.Struct, kw_only=True):
    run_id: str
    role: str
    type: str
    path: str
    artifact_id: str | None
    alias: str | None
    hash: str | None


# A rebuild has the server compute every table from the log (queries.sql), which must match these
# handlers exactly (tests/test_server_rebuild.py compares the two); the handlers project each append.
_QUERIES = load_queries("projections")
ARTIFACTS = Table(
    "artifacts",
    ArtifactRow,
    key=("id",),
    json_columns=frozenset({"metadata"}),
    rebuild_query=_QUERIES["artifacts_rebuild"],
)
ALIASES = Table("aliases", AliasRow, key=("user_name", "alias"), rebuild_query=_QUERIES["aliases_rebuild"])
RUN_OUTPUTS = Table(
    "run_outputs", RunOutputRow, key=("run_id", "artifact_id"), rebuild_query=_QUERIES["run_outputs_rebuild"]
)
RUN_INPUTS = Table("run_inputs", RunInputRow, key=("run_id", "role"), rebuild_query=_QUERIES["run_inputs_rebuild"])

projection = Projection("artifacts", [ARTIFACTS, ALIASES, RUN_OUTPUTS, RUN_INPUTS])


@projection.on(ArtifactRegistered)
def _registered(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, ArtifactRegistered)
    state.rows(ARTIFACTS).put(
        ArtifactRow(
            id=d.artifact_id,
            hash=d.hash,
            kind=d.kind,
            path=d.path,
            user_name=d.user,
            producer_run_id=d.producer_run_id,
            size_bytes=d.size_bytes,
            metadata=d.metadata,
            created_at=e.recorded_at,
            removed_at=None,
        )
    )


@projection.on(ArtifactsCollected)
def _collected(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, ArtifactsCollected)
    rows = state.rows(ARTIFACTS)
    for artifact_id in d.artifact_ids:
        row = rows.get(artifact_id)
        if row is not None:
            row.removed_at = e.recorded_at
            rows.put(row)


@projection.on(AliasSet)
def _alias_set(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, AliasSet)
    state.rows(ALIASES).put(AliasRow(user_name=d.user, alias=d.alias, artifact_id=d.artifact_id, set_at=e.recorded_at))


@projection.on(AliasRemoved)
def _alias_removed(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, AliasRemoved)
    state.rows(ALIASES).delete(d.user, d.alias)


@projection.on(OutputLinked)
def _output(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, OutputLinked)
    state.rows(RUN_OUTPUTS).put(
        RunOutputRow(run_id=d.run_id, artifact_id=d.artifact_id, role=d.role, path=d.path, step=d.step)
    )


@projection.on(RunSubmitted)
def _inputs(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, RunSubmitted)
    _put_inputs(state, d.run_id, d.inputs)


@projection.on(RunImported)
def _imported_inputs(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, RunImported)
    _put_inputs(state, d.run_id, d.inputs)


def _put_inputs(state: State, run_id: str, inputs: list[InputRef]) -> None:
    rows = state.rows(RUN_INPUTS)
    for i in inputs:
        rows.put(
            RunInputRow(
                run_id=run_id,
                role=i.role,
                type=i.type,
                path=i.path,
                artifact_id=i.artifact_id,
                alias=i.alias,
                hash=i.hash,
            )
        )


@projection.on(ArtifactImported)
def _imported(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, ArtifactImported)
    state.rows(ARTIFACTS).put(
        ArtifactRow(
            id=d.artifact_id,
            hash=d.hash,
            kind=d.kind,
            path=d.path,
            user_name=d.user,
            producer_run_id=d.producer_run_id,
            size_bytes=None,
            metadata=d.metadata,
            created_at=d.created_at,
            removed_at=None,
        )
    )


@projection.on(AliasImported)
def _alias_imported(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, AliasImported)
    state.rows(ALIASES).put(AliasRow(user_name=d.user, alias=d.alias, artifact_id=d.artifact_id, set_at=d.set_at))
