"""Pipelines and sweeps: plan every stage's runs up front, then advance as parents end.

``run-pipeline`` records the pipeline and one ``created`` run per stage (per
point for a sweep stage) in one transaction, then calls ``advance``, which
is also what the advancer reactor calls whenever a run of the pipeline ends:

* a waiting run whose parent stages all succeeded is submitted, its stage
  inputs resolved to the parents' content-addressed outputs (exactly once:
  the submission expects the run stream at its ``created`` version);
* a waiting run with a parent stage that ended any other way ends
  ``dependency_failed``, naming the cause;
* when every run has ended, the pipeline's outcome is recorded.

Cache hits end at submission, so a chain of them resolves within one call.
A sweep (``run-sweep``) is the same machinery: a pipeline whose first stage
has one run per index and whose optional second stage is the aggregate.
"""

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
from events.types import (
    InputRef,
    PipelineCreated,
    PipelineFinished,
    RunFinished,
    RunPending,
    StageSpec,
    SweepCreated,
    SweepFinished,
)
from labctl.app import App
from labctl.errors import InputError, UserError
from labctl.files import FileFormatError, FromInput, Recipe, StageInput, load_pipeline, load_recipe
from labctl.files.pipeline import PipelinePlan, PlannedStage
from labctl.ids import new_id, new_run_id
from labctl.lookup import resolve_id
from labctl.secrets import split_secrets
from labctl.submit import StageContext, artifact_alias, prepare, submit
from projections.runs import SUCCESS_STATES, TERMINAL_STATES


class PipelineSubmitted(msgspec.Struct, kw_only=True):
    pipeline_id: str
    name: str
    runs: dict[str, list[str]]  # stage -> run ids
    sweep_id: str | None = None


# ------------------------------------------------------------------ planning


def _with_index(recipe: Recipe, index: int) -> Recipe:
    assert recipe.sweep is not None
    return msgspec.structs.replace(recipe, args={**recipe.args, recipe.sweep.arg: str(index)})


def _check_static_inputs(app: App, stage: PlannedStage) -> None:
    """Inputs that don't depend on parents (artifacts, externals) must resolve now."""
    if stage.parents or any(isinstance(i, StageInput | FromInput) for i in stage.recipe.inputs.values()):
        from labctl.submit import _resolve_inputs

        only_static = msgspec.structs.replace(
            stage.recipe,
            inputs={r: i for r, i in stage.recipe.inputs.items() if not isinstance(i, StageInput | FromInput)},
        )
        _resolve_inputs(app.db.conn, only_static, stage.recipe_path, app.user, StageContext())
        return
    recipe = _with_index(stage.recipe, stage.recipe.sweep.start) if stage.recipe.sweep else stage.recipe
    prepare(app, recipe, stage.recipe_path)  # renders and resolves: raises on any user mistake


def _refuse_literal_secrets(stage: PlannedStage) -> None:
    """A stage's recipe is recorded before its run dir exists: a secret value has nowhere safe to wait."""
    _, secrets = split_secrets(stage.recipe.env)
    for name in secrets:
        raise FileFormatError(
            stage.recipe_path,
            f"env.{name}",
            f"looks like a secret and would be recorded for everyone to read; write "
            f'"${{{name}}}" and export {name} where the job starts (the agent, or the shell that submits to SLURM)',
        )


def _pin(conn: psycopg.Connection[Any], plan: PipelinePlan) -> str | None:
    if plan.from_ is None:
        return None
    row = conn.execute("SELECT id, status FROM runs WHERE id = %s", (plan.from_,)).fetchone()
    if row is None:
        raise FileFormatError(plan.path, "from", f"no run {plan.from_!r} to pin")
    if row[1] not in SUCCESS_STATES:
        raise FileFormatError(plan.path, "from", f"run {plan.from_} ended {row[1]}; a pin must have succeeded")
    return str(row[0])


def _check_pinned_roles(conn: psycopg.Connection[Any], plan: PipelinePlan, from_run: str) -> None:
    """Every ``type = "from"`` input must name an output the pinned run registered: refuse now, not mid-run."""
    roles = {r[0] for r in conn.execute("SELECT DISTINCT role FROM run_outputs WHERE run_id = %s", (from_run,))}
    for stage in plan.stages:
        for role, spec in stage.recipe.inputs.items():
            if isinstance(spec, FromInput) and spec.role not in roles:
                offered = ", ".join(sorted(roles)) or "none"
                raise FileFormatError(
                    stage.recipe_path,
                    f"inputs.{role}.role",
                    f"the pinned run {from_run} has no output {spec.role!r}; its outputs are: {offered}",
                )


def _pending_runs(
    app: App, pipeline_id: str, stage: PlannedStage, run_ids: list[str], sweep_id: str | None, executor: str
) -> list[NewEvent]:
    batch = []
    for i, run_id in enumerate(run_ids):
        index = stage.recipe.sweep.start + i if stage.recipe.sweep else None
        pending = RunPending(
            run_id=run_id,
            name=stage.recipe.name,
            user=app.user,
            executor=executor,
            run_dir=str(Path(app.config.filesystem.runs_base) / app.user / run_id),
            recipe=msgspec.to_builtins(stage.recipe),
            pipeline_id=pipeline_id,
            stage_name=stage.name,
            parents=stage.parents,
            recipe_path=stage.recipe_path,
            sweep_id=sweep_id,
            sweep_index=index,
        )
        batch.append(NewEvent(f"run-{run_id}", pending, 0))
    return batch


def create_pipeline(
    app: App, plan: PipelinePlan, *, executor: str | None = None, sweep_of: str | None = None
) -> PipelineSubmitted:
    """Validate everything, then record the pipeline and a ``created`` run per stage (per point)."""
    executor = executor or app.executor
    if executor not in {"local", "slurm"}:
        raise InputError(f"--executor {executor!r}: expected local or slurm")
    from_run = _pin(app.db.conn, plan)
    if from_run is not None:
        _check_pinned_roles(app.db.conn, plan, from_run)
    for stage in plan.stages:
        _refuse_literal_secrets(stage)
        _check_static_inputs(app, stage)
    pipeline_id = new_id("pipeline")
    specs: list[StageSpec] = []
    batch: list[NewEvent] = []
    runs: dict[str, list[str]] = {}
    sweep_ids: dict[str, str] = {}
    for stage in plan.stages:
        sweep = stage.recipe.sweep
        count = sweep.end - sweep.start + 1 if sweep else 1
        run_ids = [new_run_id() for _ in range(count)]
        sweep_id = new_id("sweep") if sweep else None
        if sweep_id:
            sweep_ids[stage.name] = sweep_id
        runs[stage.name] = run_ids
        specs.append(StageSpec(name=stage.name, run_ids=run_ids, parents=stage.parents, sweep_id=sweep_id))
        batch += _pending_runs(app, pipeline_id, stage, run_ids, sweep_id, executor)
    created = PipelineCreated(
        pipeline_id=pipeline_id, name=plan.name, user=app.user, stages=specs, file_path=plan.path, from_run=from_run
    )
    head = [NewEvent(f"pipeline-{pipeline_id}", created, 0)]
    for stage in plan.stages:
        if stage.name in sweep_ids:
            sweep = stage.recipe.sweep
            assert sweep is not None
            aggregate = next((s for s in plan.stages if stage.name in s.parents), None) if sweep_of else None
            head.append(
                NewEvent(
                    f"sweep-{sweep_ids[stage.name]}",
                    SweepCreated(
                        sweep_id=sweep_ids[stage.name],
                        name=stage.recipe.name,
                        user=app.user,
                        arg=sweep.arg,
                        start=sweep.start,
                        end=sweep.end,
                        run_ids=runs[stage.name],
                        throttle=sweep.throttle,
                        aggregate_run_id=runs[aggregate.name][0] if aggregate else None,
                        pipeline_id=pipeline_id,
                    ),
                    0,
                )
            )
    app.record([*head, *batch], f"pipeline-{pipeline_id}")
    advance(app, pipeline_id)
    return PipelineSubmitted(
        pipeline_id=pipeline_id, name=plan.name, runs=runs, sweep_id=next(iter(sweep_ids.values()), None)
    )


def run_pipeline(app: App, path: str | Path, *, executor: str | None = None) -> PipelineSubmitted:
    return create_pipeline(app, load_pipeline(path), executor=executor)


def sweep_plan(recipe: Recipe, recipe_path: str | Path) -> PipelinePlan:
    """A sweep as a pipeline: the points' stage, then the aggregate stage if the recipe names one."""
    if recipe.sweep is None:
        raise FileFormatError(recipe_path, "sweep", "this recipe has no [sweep] table; use `labctl run`")
    path = str(Path(recipe_path).resolve())
    stages = [PlannedStage(name=recipe.name, recipe_path=path, recipe=recipe, parents=[])]
    if recipe.sweep.aggregate:
        aggregate = load_recipe(recipe.sweep.aggregate, pipeline=True)
        for role, spec in aggregate.inputs.items():
            # The points' stage is named after the swept recipe; any other name would crash the advancer later.
            if isinstance(spec, StageInput) and spec.stage != recipe.name:
                raise FileFormatError(
                    recipe.sweep.aggregate,
                    f"inputs.{role}.stage",
                    f"no stage {spec.stage!r} in this sweep; the points' stage is named after the swept recipe: "
                    f"{recipe.name!r}",
                )
            if isinstance(spec, StageInput) and spec.role not in recipe.outputs:
                raise FileFormatError(
                    recipe.sweep.aggregate, f"inputs.{role}.role", f"the swept recipe has no output {spec.role!r}"
                )
        stages.append(
            PlannedStage(name="aggregate", recipe_path=recipe.sweep.aggregate, recipe=aggregate, parents=[recipe.name])
        )
    return PipelinePlan(name=f"sweep-{recipe.name}", path=path, from_=None, stages=stages)


def run_sweep(app: App, recipe: Recipe, recipe_path: str | Path, *, executor: str | None = None) -> PipelineSubmitted:
    return create_pipeline(app, sweep_plan(recipe, recipe_path), executor=executor, sweep_of=recipe.name)


# ------------------------------------------------------------------ advancing


class _RunRow(msgspec.Struct):
    id: str
    status: str
    stage: str
    sweep_index: int | None
    version: int
    user: str


def _load(conn: psycopg.Connection[Any], pipeline_id: str) -> tuple[Any, list[Any], dict[str, _RunRow]]:
    pipeline = conn.execute(
        "SELECT id, status, from_run, user_name FROM pipelines WHERE id = %s", (pipeline_id,)
    ).fetchone()
    stages = conn.execute(
        "SELECT stage_name, run_ids, parents FROM pipeline_stages WHERE pipeline_id = %s ORDER BY ordinal",
        (pipeline_id,),
    ).fetchall()
    rows = conn.execute(
        "SELECT id, status, stage_name, sweep_index, stream_version, user_name FROM runs WHERE pipeline_id = %s",
        (pipeline_id,),
    ).fetchall()
    return pipeline, stages, {r[0]: _RunRow(*r) for r in rows}


def _stage_state(run_ids: Sequence[str], runs: dict[str, _RunRow]) -> tuple[str, str | None]:
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
    pipeline, stages, runs = _load(conn, pipeline_id)
    if pipeline is None or pipeline[1] != "running":
        return False, False
    run_ids_of = {name: list(run_ids) for name, run_ids, _ in stages}
    changed = ended = False
    for _name, run_ids, parents in stages:
        waiting = [runs[r] for r in run_ids if r in runs and runs[r].status == "created"]
        if not waiting:
            continue
        parent_states = {p: _stage_state(run_ids_of[p], runs) for p in parents}
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


def _end_dependency_failed(app: App, row: _RunRow, reason: str) -> bool:
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
    app: App, pipeline: Any, run_ids_of: dict[str, list[str]], runs: dict[str, _RunRow], row: _RunRow
) -> str | None:
    """Submit one waiting run: ``"queued"``, ``"ended"`` (a cache hit or a failed submission) or None."""
    conn = app.db.conn
    pending = _pending_of(conn, row.id)
    if pending is None:
        return None
    recipe = msgspec.convert(pending.recipe, Recipe)
    if pending.sweep_index is not None:
        recipe = _with_index(recipe, pending.sweep_index)
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


def _outputs_of(conn: psycopg.Connection[Any], run_id: str, role: str) -> list[tuple[str, str, str, int | None]]:
    return conn.execute(
        "SELECT o.artifact_id, o.path, a.hash, o.step FROM run_outputs o JOIN artifacts a ON a.id = o.artifact_id "
        "WHERE o.run_id = %s AND o.role = %s ORDER BY o.step NULLS FIRST",
        (run_id, role),
    ).fetchall()


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
    if len(outs) == 1 and outs[0][3] is None:
        aid, path, digest, _ = outs[0]
        return InputRef(role=input_role, type="stage", path=path, artifact_id=aid, alias=alias, hash=digest)
    if newest_step:
        aid, path, digest, step = outs[-1]
        alias = artifact_alias(conn, aid, path, step)
        return InputRef(role=input_role, type="stage", path=path, artifact_id=aid, alias=alias, hash=digest)
    # A checkpoint stream: the directory holding the steps.
    digest = hashlib.sha256("\n".join(o[2] for o in outs).encode()).hexdigest()
    return InputRef(role=input_role, type="stage", path=str(Path(outs[0][1]).parent), alias=alias, hash=digest)


def _output_alias(conn: psycopg.Connection[Any], run_id: str, role: str) -> str | None:
    """The alias a run gave its output ``role`` (its recipe as submitted, rendered)."""
    row = conn.execute(
        "SELECT recipe -> 'outputs' -> %s ->> 'alias' FROM runs WHERE id = %s", (role, run_id)
    ).fetchone()
    return row[0] if row and row[0] else None


def _resolve_stage_input(
    conn: psycopg.Connection[Any],
    spec: StageInput | FromInput,
    pipeline: Any,
    run_ids_of: dict[str, list[str]],
    run_dir: Path,
    role: str,
) -> InputRef:
    if isinstance(spec, FromInput):
        ref = _input_of_run(conn, pipeline[2], spec.role, role, newest_step=True)
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


def _close_if_done(app: App, pipeline_id: str, stages: list[Any], runs: dict[str, _RunRow]) -> bool:
    all_ids = [r for _, run_ids, _ in stages for r in run_ids]
    if not all(r in runs and runs[r].status in TERMINAL_STATES for r in all_ids):
        return False
    batch: list[NewEvent] = []
    for _name, run_ids, _ in stages:
        sweep = app.db.conn.execute(
            "SELECT id, status FROM sweeps WHERE pipeline_id = %s AND %s = ANY(run_ids)", (pipeline_id, run_ids[0])
        ).fetchone()
        if sweep and sweep[1] == "running":
            state, _ = _stage_state(run_ids, runs)
            batch.append(NewEvent(f"sweep-{sweep[0]}", SweepFinished(sweep_id=sweep[0], state=state), 1))
    failed = [(n, c) for n, run_ids, _ in stages for s, c in [_stage_state(run_ids, runs)] if s != "succeeded"]
    state = "failed" if failed else "succeeded"
    reason = f"stage {failed[0][0]}: {failed[0][1]}" if failed else None
    batch.insert(
        0, NewEvent(f"pipeline-{pipeline_id}", PipelineFinished(pipeline_id=pipeline_id, state=state, reason=reason), 1)
    )
    try:
        app.record(batch, f"close-{pipeline_id}")
    except ConcurrencyError:
        return False
    return True


# ------------------------------------------------------------------- reading


def resolve_pipeline(conn: psycopg.Connection[Any], ref: str) -> str:
    return resolve_id(conn, "pipelines", "pipeline", ref)


def unfinished_runs(conn: psycopg.Connection[Any], pipeline_id: str) -> list[str]:
    terminal = list(TERMINAL_STATES)
    rows = conn.execute(
        "SELECT id FROM runs WHERE pipeline_id = %s AND NOT (status = ANY(%s)) ORDER BY created_at",
        (pipeline_id, terminal),
    ).fetchall()
    return [r[0] for r in rows]


def pipeline_view(conn: psycopg.Connection[Any], pipeline_id: str) -> dict[str, Any]:
    """The pipeline with each stage's parents, state and runs (what ``pipeline-show`` prints)."""
    pipeline, stages, runs = _load(conn, pipeline_id)
    if pipeline is None:
        raise UserError(f"no pipeline {pipeline_id!r}")
    info = conn.execute(
        "SELECT name, user_name, status, reason, created_at, finished_at, file_path, from_run "
        "FROM pipelines WHERE id = %s",
        (pipeline_id,),
    ).fetchone()
    assert info is not None
    view: dict[str, Any] = {
        "id": pipeline_id,
        "name": info[0],
        "user": info[1],
        "status": info[2],
        "reason": info[3],
        "created_at": info[4],
        "finished_at": info[5],
        "file": info[6],
        "from": info[7],
        "stages": [],
    }
    for name, run_ids, parents in stages:
        state, cause = _stage_state(run_ids, runs)
        statuses = [runs[r].status for r in run_ids if r in runs]
        if state == "waiting" and any(s not in ("created",) for s in statuses):
            state = "running"
        elif state == "waiting":
            state = "created"
        view["stages"].append(
            {
                "name": name,
                "parents": list(parents),
                "state": state,
                "cause": cause,
                "runs": [{"id": r, "status": runs[r].status if r in runs else None} for r in run_ids],
            }
        )
    return view


def render_pipeline(view: dict[str, Any]) -> str:
    """The DAG as indented text: each stage under its first parent, with state and runs."""
    lines = [f"{view['id']}  {view['name']}  {view['status']}" + (f"  ({view['reason']})" if view["reason"] else "")]
    children: dict[str | None, list[dict[str, Any]]] = {}
    for stage in view["stages"]:
        children.setdefault(stage["parents"][0] if stage["parents"] else None, []).append(stage)

    def walk(parent: str | None, depth: int) -> None:
        for stage in children.get(parent, []):
            counts: dict[str, int] = {}
            for r in stage["runs"]:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            runs = (
                stage["runs"][0]["id"]
                if len(stage["runs"]) == 1
                else ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            )
            also = [p for p in stage["parents"][1:]]
            after = f"  (also after {', '.join(also)})" if also else ""
            lines.append(f"{'  ' * depth}└─ {stage['name']}: {stage['state']}  [{runs}]{after}")
            walk(stage["name"], depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def pipelines_list(conn: psycopg.Connection[Any], user: str | None, limit: int = 50) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, name, status, user_name, created_at, finished_at FROM pipelines "
        "WHERE %(user)s::text IS NULL OR user_name = %(user)s ORDER BY created_at DESC LIMIT %(limit)s",
        {"user": user, "limit": limit},
    ).fetchall()


def running_pipelines(conn: psycopg.Connection[Any], user: str | None = None) -> list[str]:
    """Running pipelines (only ``user``'s when given), oldest first."""
    rows = conn.execute(
        "SELECT id FROM pipelines WHERE status = 'running' AND (%(user)s::text IS NULL OR user_name = %(user)s) "
        "ORDER BY created_at",
        {"user": user},
    )
    return [r[0] for r in rows]
