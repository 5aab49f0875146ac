"""Registering a finished run's outputs, in three steps: plan (which outputs are there, their
hashes; reads files), store (directories move into the object store), events (what records it)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from events import NewEvent
from events.queries import load_queries
from events.types import AliasSet, ArtifactRegistered, OutputLinked, OutputSpec, RunSubmitted
from labctl.artifacts import (
    ArtifactMeta,
    artifact_id,
    checkpoint_steps,
    dir_content_hash,
    path_identity_hash,
    read_output_hashes,
    store_output,
)
from labctl.files import ClusterConfig
from labctl.linking import KIND_OF_OUTPUT, LinkedOutput, alias_link
from labctl.names import inside

QUERIES = load_queries("labctl", "artifacts.sql")

log = logging.getLogger(__name__)


class Piece(msgspec.Struct, kw_only=True):
    """One artifact of an output: a directory, or one step of a checkpoint stream."""

    digest: str
    path: str
    step: int | None = None
    metadata: dict[str, Any]


class OutputPlan(msgspec.Struct, kw_only=True):
    out: OutputSpec
    kind: str
    pieces: list[Piece]
    #: a directory output moves into the object store; checkpoint steps stay where they were written
    into_store: bool
    #: what the alias points at: the stored object, or a checkpoint stream's directory
    alias_target: str


class Registered(msgspec.Struct, kw_only=True):
    events: list[NewEvent]
    linked: list[LinkedOutput]


def plan_outputs(config: ClusterConfig, sub: RunSubmitted) -> list[OutputPlan]:
    """The outputs the run left, with their hashes (``.lab/output_hashes.json`` if the job wrote it).

    Raises ValueError for an output outside its output root.
    """
    manifest = read_output_hashes(sub.run_dir) or {}
    plans = []
    for out in sub.outputs:
        kind = KIND_OF_OUTPUT.get(out.type, out.type)
        base = Path(out.path)
        output_root = config.filesystem.output_roots.get(out.type)
        if output_root:
            inside(output_root, base)  # a path recorded before aliases were checked must not move anything else
        if out.type == "checkpoint_stream":
            pieces = [
                Piece(
                    digest=path_identity_hash(str(step_path)),
                    path=str(step_path),
                    step=step,
                    metadata={"step": step, "role": out.role, "producer_recipe": sub.name},
                )
                for step, step_path in checkpoint_steps(base, out.marker or "")
            ]
            plans.append(OutputPlan(out=out, kind=kind, pieces=pieces, into_store=False, alias_target=str(base)))
            continue
        if out.marker and not (base / out.marker).is_file():
            log.info("run %s: output %s has no marker %s; not registered", sub.run_id, out.role, out.marker)
            continue
        if not out.marker and not (base.is_dir() and any(base.iterdir())):
            continue
        metadata: dict[str, Any] = {"role": out.role, "producer_recipe": sub.name}
        if out.type == "eval_result" and out.marker:
            try:
                metadata["result"] = json.loads((base / out.marker).read_text())
            except (OSError, ValueError):
                metadata["result"] = None
        piece = Piece(digest=manifest.get(out.role) or dir_content_hash(base), path=out.path, metadata=metadata)
        plans.append(OutputPlan(out=out, kind=kind, pieces=[piece], into_store=True, alias_target=out.path))
    return plans


def _artifact_root(config: ClusterConfig, kind: str, output_path: str) -> Path:
    root = config.filesystem.artifact_roots.get(kind)
    return Path(root) if root else Path(output_path).parent.parent / "_store"


def store_outputs(config: ClusterConfig, sub: RunSubmitted, plans: list[OutputPlan], *, now: datetime) -> None:
    """Move each directory output into the content-addressed store (its piece and alias then point there)."""
    for plan in plans:
        if not plan.into_store:
            continue
        piece = plan.pieces[0]
        stored = store_output(
            _artifact_root(config, plan.kind, plan.out.path),
            Path(plan.out.path),
            piece.digest,
            ArtifactMeta(
                id=artifact_id(piece.digest),
                hash=piece.digest,
                kind=plan.kind,
                producer_run_id=sub.run_id,
                created_by=sub.user,
                created_at=now.isoformat(),
                alias=plan.out.alias,
                metadata=piece.metadata,
                source_path=plan.out.path,
            ),
        )
        piece.path = plan.alias_target = str(stored)


class Known(msgspec.Struct, frozen=True):
    """An artifact registered already: who produced it, whether its bytes are still there."""

    producer_run_id: str | None
    live: bool


def registered_artifacts(conn: psycopg.Connection[Any], plans: Iterable[OutputPlan]) -> dict[str, Known]:
    """Which of the plans' artifacts are registered already (the plans of several runs: one query)."""
    ids = [artifact_id(piece.digest) for plan in plans for piece in plan.pieces]
    rows = conn.execute(QUERIES["registered_artifacts"], {"ids": ids}).fetchall() if ids else []
    return {aid: Known(producer, live) for aid, producer, live in rows}


def output_events(
    conn: psycopg.Connection[Any], sub: RunSubmitted, plans: list[OutputPlan], known: dict[str, Known] | None = None
) -> Registered:
    """ArtifactRegistered for artifacts not yet known, OutputLinked for each piece, AliasSet per output.
    ``known``: ``registered_artifacts`` of these plans, when read already."""
    batch: list[NewEvent] = []
    linked: list[LinkedOutput] = []
    if known is None:
        known = registered_artifacts(conn, plans)
    for plan in plans:
        last = None
        for piece in plan.pieces:
            aid = artifact_id(piece.digest)
            found = known.get(aid)
            # registered before by this run (a retried end), or by another whose bytes are still there
            exists = found is not None and (found.producer_run_id == sub.run_id or found.live)
            if not exists:
                registered = ArtifactRegistered(
                    artifact_id=aid,
                    hash=piece.digest,
                    kind=plan.kind,
                    path=piece.path,
                    user=sub.user,
                    producer_run_id=sub.run_id,
                    metadata=piece.metadata,
                )
                batch.append(NewEvent(f"artifact-{aid}", registered))
            link = OutputLinked(
                run_id=sub.run_id, role=plan.out.role, artifact_id=aid, path=piece.path, step=piece.step
            )
            batch.append(NewEvent(f"run-{sub.run_id}", link))
            linked.append(LinkedOutput(plan.out.role, aid, piece.path, piece.step))
            last = aid
        if last is not None:
            alias = AliasSet(user=sub.user, alias=plan.out.alias, artifact_id=last)
            batch.append(NewEvent(f"alias-{sub.user}/{plan.out.alias}", alias))
    return Registered(events=batch, linked=linked)


def store_files(config: ClusterConfig, sub: RunSubmitted, *, now: datetime) -> list[OutputPlan]:
    """Hash and store each finished output (files move here, no database): what ``record_outputs`` records."""
    plans = plan_outputs(config, sub)
    store_outputs(config, sub, plans, now=now)
    return plans


def record_outputs(
    conn: psycopg.Connection[Any],
    config: ClusterConfig,
    sub: RunSubmitted,
    plans: list[OutputPlan],
    known: dict[str, Known] | None = None,
) -> Registered:
    """The events that record the stored outputs; each output's alias link points at what it stored."""
    registered = output_events(conn, sub, plans, known)
    for plan in plans:
        if plan.pieces:
            alias_link(config, sub.user, plan.out.alias, plan.kind, Path(plan.alias_target))
    return registered


def missing_outputs(sub: RunSubmitted, registered: Registered) -> list[str]:
    """Declared outputs with a marker that a succeeded run did not write (so nothing was registered for them)."""
    roles = {o.role for o in registered.linked}
    missing = []
    for out in sub.outputs:
        if out.marker and out.role not in roles:
            where = f"{out.path}/<step>/{out.marker}" if out.type == "checkpoint_stream" else f"{out.path}/{out.marker}"
            missing.append(f"output {out.role} has no marker ({where})")
    return missing
