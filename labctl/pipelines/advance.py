"""Advancing a pipeline: submit runs whose parents succeeded, fail those whose parents did not,
close the pipeline when every run has ended (called by the advancer reactor and after creation)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import psycopg

import events
from events import ConcurrencyError, NewEvent
from events.queries import load_queries, row_as, rows_as
from events.types import InputRef, PipelineFinished, RunFinished, RunPending, SweepFinished
from labctl.app import App
from labctl.errors import UserError
from labctl.files import FileFormatError, FromInput, Recipe, StageInput
from labctl.submit import StageContext, artifact_alias, submit
from projections.runs import SUCCESS_STATES, TERMINAL_STATES

QUERIES = load_queries("labctl.pipelines", "pipelines.sql")


def with_index(recipe: Recipe, index: int) -> Recipe:
    """The recipe of one sweep point: its sweep argument set to ``index``."""
    assert recipe.sweep is not None
    return msgspec.structs.replace(recipe, args={**recipe.args, recipe.sweep.arg: str(index)})


class RunRow(msgspec.Struct):
    id: str
    status: str
    stage: str
    sweep_index: int | None
    version: int
    user: str


class PipelineRow(msgspec.Struct):
    id: str
    status: str
    from_run: str | None
    user: str


class StageRow(msgspec.Struct):
    name: str
    run_ids: list[str]
    parents: list[str]


def load(
    conn: psycopg.Connection[Any], pipeline_id: str
) -> tuple[PipelineRow | None, list[StageRow], dict[str, RunRow]]:
    """The pipeline, its stages in declaration order, and its runs by id."""
    by_id = {"id": pipeline_id}
    pipeline = row_as(conn, PipelineRow, QUERIES["pipeline"], by_id)
    stages = rows_as(conn, StageRow, QUERIES["stages"], by_id)
    return pipeline, stages, {r.id: r for r in rows_as(conn, RunRow, QUERIES["runs"], by_id)}


#: run ends that make a pipeline ``failed`` rather than ``cancelled``
HARD_FAILURES = TERMINAL_STATES - SUCCESS_STATES - {"cancelled", "dependency_failed"}


def stage_state(run_ids: Sequence[str], runs: dict[str, RunRow]) -> tuple[str, str | None]:
    """``succeeded`` / ``failed`` (with the cause) / ``waiting`` for a stage's runs."""
    states = [runs[r].status for r in run_ids if r in runs]
    for r in run_ids:
        if r in runs and runs[r].status in TERMINAL_STATES - SUCCESS_STATES:
            return "failed", f"{r} ended {runs[r].status}"
    if len(states) == len(run_ids) and all(s in SUCCESS_STATES for s in states):
        return "succeeded", None
    return "waiting", None


def advance(app: App, pipeline_id: str) -> bool:
    """Submit what can run, fail what cannot, close the pipeline when done; True if anything changed."""
    changed = False
    for _ in range(1000):  # each pass handles one wave; cache-hit chains take several
        step, ended = _advance_once(app, pipeline_id)
        changed |= step
        if not ended:
            break  # runs that were only queued cannot release anything else yet
    return changed


def _advance_once(app: App, pipeline_id: str) -> tuple[bool, bool]:
    """One wave: ``(anything changed, some run ended)``; only an ended run can make another wave."""
    conn = app.db.conn
    pipeline, stages, runs = load(conn, pipeline_id)
    if pipeline is None or pipeline.status != "running":
        return False, False
    run_ids_of = {stage.name: stage.run_ids for stage in stages}
    changed = ended = False
    for stage in stages:
        waiting = [runs[r] for r in stage.run_ids if r in runs and runs[r].status == "created"]
        if not waiting:
            continue
        parent_states = {p: stage_state(run_ids_of[p], runs) for p in stage.parents}
        failed = [(p, cause) for p, (state, cause) in parent_states.items() if state == "failed"]
        if failed:
            p, cause = failed[0]
            for row in waiting:
                if _end_dependency_failed(app, row, f"parent stage {p} failed: {cause}"):
                    changed = ended = True
            continue
        if all(state == "succeeded" for state, _ in parent_states.values()):
            for row in waiting:
                outcome = _submit_waiting(app, pipeline, run_ids_of, runs, row)
                changed |= outcome is not None
                ended |= outcome == "ended"
    if not changed:
        changed = _close_if_done(app, pipeline_id, stages, runs)
    return changed, ended


def _end_dependency_failed(app: App, row: RunRow, reason: str) -> bool:
    end = RunFinished(run_id=row.id, state="dependency_failed", reason=reason, finished_at=datetime.now(UTC))
    try:
        app.record([NewEvent(f"run-{row.id}", end, row.version)], f"depfail-{row.id}")
    except ConcurrencyError:
        return False
    return True


def _pending_of(conn: psycopg.Connection[Any], run_id: str) -> RunPending | None:
    for e in events.read_stream(conn, f"run-{run_id}"):
        if isinstance(e.data, RunPending):
            return e.data
    return None


def _submit_waiting(
    app: App, pipeline: PipelineRow, run_ids_of: dict[str, list[str]], runs: dict[str, RunRow], row: RunRow
) -> str | None:
    """Submit one waiting run: ``"queued"``, ``"ended"`` (a cache hit or a failed submission) or None."""
    conn = app.db.conn
    pending = _pending_of(conn, row.id)
    if pending is None:
        return None
    recipe = msgspec.convert(pending.recipe, Recipe)
    if pending.sweep_index is not None:
        recipe = with_index(recipe, pending.sweep_index)
    as_user = dataclasses.replace(app, user=pending.user)
    try:
        inputs = {
            role: _resolve_stage_input(conn, spec, pipeline, run_ids_of, Path(pending.run_dir), role)
            for role, spec in recipe.inputs.items()
            if isinstance(spec, StageInput | FromInput)
        }
        result = submit(
            as_user,
            recipe,
            pending.recipe_path or "",
            executor=pending.executor,
            stage=StageContext(
                pipeline_id=pending.pipeline_id,
                stage_name=pending.stage_name,
                sweep_id=pending.sweep_id,
                sweep_index=pending.sweep_index,
                inputs=inputs,
            ),
            run_id=row.id,
            run_version=row.version,
            no_cache=pending.no_cache,
        )
    except ConcurrencyError:
        return None  # another agent submitted it first
    except (UserError, FileFormatError, OSError) as exc:
        end = RunFinished(
            run_id=row.id, state="failed", reason=f"could not submit: {exc}", finished_at=datetime.now(UTC)
        )
        try:
            app.record([NewEvent(f"run-{row.id}", end, row.version)], f"subfail-{row.id}-{uuid.uuid4().hex}")
        except ConcurrencyError:
            return None
        return "ended"
    return "ended" if result.status in TERMINAL_STATES else "queued"


class StageOutput(msgspec.Struct, frozen=True):
    """One artifact a run registered for an output role (a checkpoint stream: one per step)."""

    artifact_id: str
    path: str
    hash: str
    step: int | None


def _outputs_of(conn: psycopg.Connection[Any], run_id: str, role: str) -> list[StageOutput]:
    return rows_as(conn, StageOutput, QUERIES["outputs_of_role"], {"run_id": run_id, "role": role})


def _input_of_run(
    conn: psycopg.Connection[Any], run_id: str, role: str, input_role: str, *, newest_step: bool = False
) -> InputRef:
    """The input a run's output ``role`` makes: its artifact, or a checkpoint stream's directory of steps.

    ``newest_step``: a stream gives its newest step's artifact instead, as the original's ``from`` pins do.
    """
    outs = _outputs_of(conn, run_id, role)
    if not outs:
        raise UserError(f"run {run_id} registered no output {role!r}")
    alias = _output_alias(conn, run_id, role)
    if len(outs) == 1 and outs[0].step is None:
        one = outs[0]
        return InputRef(
            role=input_role, type="stage", path=one.path, artifact_id=one.artifact_id, alias=alias, hash=one.hash
        )
    if newest_step:
        last = outs[-1]
        alias = artifact_alias(conn, last.artifact_id, last.path, last.step)
        return InputRef(
            role=input_role, type="stage", path=last.path, artifact_id=last.artifact_id, alias=alias, hash=last.hash
        )
    # A checkpoint stream: the directory holding the steps.
    digest = hashlib.sha256("\n".join(o.hash for o in outs).encode()).hexdigest()
    return InputRef(role=input_role, type="stage", path=str(Path(outs[0].path).parent), alias=alias, hash=digest)


def _output_alias(conn: psycopg.Connection[Any], run_id: str, role: str) -> str | None:
    """The alias a run gave its output ``role`` (its recipe as submitted, rendered)."""
    row = conn.execute(QUERIES["output_alias"], {"role": role, "run_id": run_id}).fetchone()
    return row[0] if row and row[0] else None


def _resolve_stage_input(
    conn: psycopg.Connection[Any],
    spec: StageInput | FromInput,
    pipeline: PipelineRow,
    run_ids_of: dict[str, list[str]],
    run_dir: Path,
    role: str,
) -> InputRef:
    if isinstance(spec, FromInput):
        assert pipeline.from_run is not None  # planning refused a "from" input without a pin
        ref = _input_of_run(conn, pipeline.from_run, spec.role, role, newest_step=True)
        return msgspec.structs.replace(ref, type="from")
    parent_runs = run_ids_of[spec.stage]
    if len(parent_runs) == 1:
        return _input_of_run(conn, parent_runs[0], spec.role, role)
    # A sweep stage: a directory of links named by point, one per run.
    folder = run_dir / ".lab" / "inputs" / role
    folder.mkdir(parents=True, exist_ok=True)
    digests = []
    for i, run_id in enumerate(parent_runs):
        ref = _input_of_run(conn, run_id, spec.role, role)
        link = folder / str(i)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(ref.path, link)
        digests.append(ref.hash or ref.path)
    digest = hashlib.sha256("\n".join(digests).encode()).hexdigest()
    return InputRef(role=role, type="stage", path=str(folder), hash=digest)


def _close_if_done(app: App, pipeline_id: str, stages: list[StageRow], runs: dict[str, RunRow]) -> bool:
    all_ids = [r for stage in stages for r in stage.run_ids]
    if not all(r in runs and runs[r].status in TERMINAL_STATES for r in all_ids):
        return False
    batch: list[NewEvent] = []
    for stage in stages:
        sweep = app.db.conn.execute(
            QUERIES["sweep_of_stage"], {"pipeline_id": pipeline_id, "run_id": stage.run_ids[0]}
        ).fetchone()
        if sweep and sweep[1] == "running":
            state, _ = stage_state(stage.run_ids, runs)
            batch.append(NewEvent(f"sweep-{sweep[0]}", SweepFinished(sweep_id=sweep[0], state=state), 1))
    failed = [(st.name, c) for st in stages for s, c in [stage_state(st.run_ids, runs)] if s != "succeeded"]
    state = "failed" if failed else "succeeded"
    ends = {runs[r].status for r in all_ids}
    if failed and "cancelled" in ends and not ends & HARD_FAILURES:
        state = "cancelled"  # stopped on purpose (`labctl cancel`), not broken
    reason = f"stage {failed[0][0]}: {failed[0][1]}" if failed else None
    batch.insert(
        0, NewEvent(f"pipeline-{pipeline_id}", PipelineFinished(pipeline_id=pipeline_id, state=state, reason=reason), 1)
    )
    try:
        app.record(batch, f"close-{pipeline_id}")
    except ConcurrencyError:
        return False
    return True


def running_pipelines(conn: psycopg.Connection[Any], user: str | None = None) -> list[str]:
    """Running pipelines (only ``user``'s when given), oldest first."""
    rows = conn.execute(QUERIES["running_pipelines"], {"user": user})
    return [r[0] for r in rows]
