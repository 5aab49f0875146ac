"""Creating a pipeline or sweep: validate every stage, then record the pipeline and a waiting
(``created``) run per stage, per point for a sweep stage, in one transaction."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from events import NewEvent
from events.types import PipelineCreated, RunPending, StageSpec, SweepCreated
from labctl import layout
from labctl.app import App
from labctl.errors import DatabaseUnavailable, InputError, UserError
from labctl.files import FileFormatError, FromInput, Recipe, StageInput, load_pipeline, load_recipe
from labctl.files.pipeline import PipelinePlan, PlannedStage
from labctl.files.recipe import param_exists
from labctl.ids import new_id, new_run_id
from labctl.packing import refuse_if_never_fits
from labctl.pipelines.advance import QUERIES, PipelineRow, advance, request_of
from labctl.secrets import split_secrets
from labctl.submit import Request, StageContext, apply_overrides, prepare, record_staged, resolve_inputs, stage_many
from projections.engine import without_gc
from projections.runs import SUCCESS_STATES, TERMINAL_STATES


class PipelineSubmitted(msgspec.Struct, kw_only=True):
    pipeline_id: str
    name: str
    runs: dict[str, list[str]]  # stage -> run ids
    sweep_id: str | None = None


def _check_static_inputs(
    app: App, stage: PlannedStage, first: RunPending, pipeline: PipelineRow, run_ids_of: dict[str, list[str]]
) -> Request | None:
    """Inputs that don't depend on parents (artifacts, externals) must resolve now. A stage with no other
    inputs has its first run (``first``) prepared as the first wave submits it: rendered and resolved, so it
    raises on any user mistake; that request, carrying the prepared run, is returned for the first wave."""
    if stage.parents or any(isinstance(i, StageInput | FromInput) for i in stage.recipe.inputs.values()):
        only_static = msgspec.structs.replace(
            stage.recipe,
            inputs={r: i for r, i in stage.recipe.inputs.items() if not isinstance(i, StageInput | FromInput)},
        )
        resolve_inputs(app.db.conn, only_static, stage.recipe_path, app.user, StageContext())
        return None
    request = request_of(app.db.conn, first, pipeline, run_ids_of, version=1)
    run = prepare(
        app, request.recipe, request.recipe_path, stage=request.stage, executor=request.executor, run_id=first.run_id
    )
    return dataclasses.replace(request, prepared=run)


def _named(stage: PlannedStage) -> str:
    sweep = stage.recipe.sweep
    return f"every point of sweep {stage.name} ({sweep.start}..{sweep.end})" if sweep else f"stage {stage.name}"


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
    row = conn.execute(QUERIES["run_status"], {"id": plan.from_}).fetchone()
    if row is None:
        raise FileFormatError(plan.path, "from", f"no run {plan.from_!r} to pin")
    if row[1] not in SUCCESS_STATES:
        raise FileFormatError(plan.path, "from", f"run {plan.from_} ended {row[1]}; a pin must have succeeded")
    return str(row[0])


def _check_pinned_roles(conn: psycopg.Connection[Any], plan: PipelinePlan, from_run: str) -> None:
    """Every ``type = "from"`` input must name an output the pinned run registered: refuse now, not mid-run."""
    roles = {r[0] for r in conn.execute(QUERIES["output_roles"], {"run_id": from_run})}
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
    app: App,
    pipeline_id: str,
    stage: PlannedStage,
    run_ids: list[str],
    sweep_id: str | None,
    executor: str,
    no_cache: bool,
) -> list[NewEvent]:
    batch = []
    for i, run_id in enumerate(run_ids):
        index = stage.recipe.sweep.start + i if stage.recipe.sweep else None
        pending = RunPending(
            run_id=run_id,
            name=stage.recipe.name,
            user=app.user,
            executor=executor,
            run_dir=str(layout.run_dir(app.config.filesystem.runs_base, app.user, run_id)),
            recipe=msgspec.to_builtins(stage.recipe),
            pipeline_id=pipeline_id,
            stage_name=stage.name,
            parents=stage.parents,
            recipe_path=stage.recipe_path,
            sweep_id=sweep_id,
            sweep_index=index,
            no_cache=no_cache,
        )
        batch.append(NewEvent(f"run-{run_id}", pending, 0))
    return batch


def create_pipeline(
    app: App,
    plan: PipelinePlan,
    *,
    executor: str | None = None,
    sweep_of: str | None = None,
    no_cache: bool = False,
) -> PipelineSubmitted:
    """Validate everything, then record the pipeline and a ``created`` run per stage (per point)."""
    return create_pipelines(app, [plan], executor=executor, sweep_of=sweep_of, no_cache=no_cache)[0]


@dataclass
class _Planned:
    """One pipeline validated, its events built and its first wave's requests made; nothing recorded."""

    submitted: PipelineSubmitted
    events: list[NewEvent]  # the pipeline (and its sweeps) and its waiting runs
    requests: list[Request]  # the first wave's submissions
    waiting: bool  # a root could not be requested: the advance ends it


def create_pipelines(
    app: App,
    plans: Sequence[PipelinePlan],
    *,
    executor: str | None = None,
    sweep_of: str | None = None,
    no_cache: bool = False,
) -> list[PipelineSubmitted]:
    """Validate every pipeline, then record them all, each with its first wave's submissions, in one append
    (``run-pipeline --each``: one pipeline per value); a failure records none of them."""
    executor = executor or app.executor
    if executor not in {"local", "slurm"}:
        raise InputError(f"--executor {executor!r}: expected local or slurm")
    # Thousands of runs' objects, none in a cycle: the cyclic collector would rescan them over and over.
    with without_gc():
        planned = [_plan(app, plan, executor, sweep_of, no_cache) for plan in plans]
        if not planned:
            return []
        # The first waves are prepared and their run dirs written (each ending in an fsync) before the
        # transaction, not while it holds the log's append lock.
        staged = stage_many(app, [r for p in planned for r in p.requests])
        first = planned[0].submitted.pipeline_id
        key = f"pipeline-{first}" if len(planned) == 1 else f"pipelines-{first}-{len(planned)}"

        def record_and_start(conn: psycopg.Connection[Any]) -> None:
            # The pipelines, their runs and the submissions of their first waves in one append (one projection
            # pass): one commit, and never a pipeline recorded without its first wave. A pipeline whose first
            # wave has a run that ended (a cache hit) or could not be submitted is advanced in the same
            # transaction. A failure records none of it.
            results = record_staged(app, staged, extra=[e for p in planned for e in p.events], key=key)
            at = 0
            for p in planned:
                mine, at = results[at : at + len(p.requests)], at + len(p.requests)
                if p.waiting or any(isinstance(r, Exception) or r.status in TERMINAL_STATES for r in mine):
                    advance(app, p.submitted.pipeline_id)

        try:
            app.db.run(record_and_start)
        except DatabaseUnavailable:
            raise  # the commit may have happened unanswered: the run dirs may be needed
        except BaseException:
            staged.discard()
            raise
        return [p.submitted for p in planned]


def _plan(app: App, plan: PipelinePlan, executor: str, sweep_of: str | None, no_cache: bool) -> _Planned:
    from_run = _pin(app.db.conn, plan)
    if from_run is not None:
        _check_pinned_roles(app.db.conn, plan, from_run)
    pipeline_id = new_id("pipeline")
    specs: list[StageSpec] = []
    batch: list[NewEvent] = []
    runs: dict[str, list[str]] = {}
    sweep_ids: dict[str, str] = {}
    first_of: dict[str, RunPending] = {}  # stage -> its first run
    for stage in plan.stages:
        sweep = stage.recipe.sweep
        count = sweep.end - sweep.start + 1 if sweep else 1
        run_ids = [new_run_id() for _ in range(count)]
        sweep_id = new_id("sweep") if sweep else None
        if sweep_id:
            sweep_ids[stage.name] = sweep_id
        runs[stage.name] = run_ids
        specs.append(StageSpec(name=stage.name, run_ids=run_ids, parents=stage.parents, sweep_id=sweep_id))
        pendings = _pending_runs(app, pipeline_id, stage, run_ids, sweep_id, executor, no_cache)
        first = pendings[0].event
        assert isinstance(first, RunPending)
        first_of[stage.name] = first
        batch += pendings
    pipeline = PipelineRow(pipeline_id, "running", from_run, app.user)
    checked: dict[str, Request] = {}  # run id -> a root's first run, prepared by its check
    for stage in plan.stages:
        _refuse_literal_secrets(stage)
        if executor == "local":  # before anything is recorded: the agent would keep it waiting forever
            refuse_if_never_fits(app.config.local, stage.recipe.resources, _named(stage))
        request = _check_static_inputs(app, stage, first_of[stage.name], pipeline, runs)
        if request is not None:
            checked[first_of[stage.name].run_id] = request
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

    roots = {stage.name for stage in plan.stages if not stage.parents}
    requests: list[Request] = []
    for pending_event in batch:
        pending = pending_event.event
        assert isinstance(pending, RunPending)
        if pending.stage_name not in roots:
            continue
        if pending.run_id in checked:
            requests.append(checked[pending.run_id])
            continue
        try:
            requests.append(request_of(app.db.conn, pending, pipeline, runs, version=1))
        except (UserError, FileFormatError, OSError):
            continue  # left waiting: the advance below ends it failed, as the advancer would
    waiting = len(requests) < sum(len(runs[name]) for name in roots)
    submitted = PipelineSubmitted(
        pipeline_id=pipeline_id, name=plan.name, runs=runs, sweep_id=next(iter(sweep_ids.values()), None)
    )
    return _Planned(submitted=submitted, events=[*head, *batch], requests=requests, waiting=waiting)


def run_pipeline(
    app: App,
    path: str | Path,
    *,
    executor: str | None = None,
    overrides: Sequence[str] = (),
    no_cache: bool = False,
) -> PipelineSubmitted:
    plan = override_stages(load_pipeline(path), overrides)
    return create_pipeline(app, plan, executor=executor, no_cache=no_cache)


def run_pipelines(
    app: App,
    path: str | Path,
    each: str,
    *,
    executor: str | None = None,
    overrides: Sequence[str] = (),
    no_cache: bool = False,
) -> list[PipelineSubmitted]:
    """``run-pipeline --each KEY=VALUES``: the pipeline once per value (as ``--set KEY=VALUE``), all recorded
    in one append."""
    key, values = each_values(each)
    base = load_pipeline(path)
    plans = [override_stages(base, [*overrides, f"{key}={value}"]) for value in values]
    return create_pipelines(app, plans, executor=executor, no_cache=no_cache)


def each_values(each: str) -> tuple[str, list[str]]:
    """``KEY=A..B`` (integers, both ends included) or ``KEY=V1,V2,...``: the key and its values."""
    key, eq, spec = each.partition("=")
    if not eq or not key or not spec:
        raise InputError(f"--each {each!r}: expected KEY=V1,V2,... or KEY=A..B (e.g. params.seed=0..9)")
    low, dots, high = spec.partition("..")
    if dots:
        try:
            start, end = int(low), int(high)
        except ValueError:
            raise InputError(f"--each {each!r}: a range A..B takes two integers") from None
        if end < start:
            raise InputError(f"--each {each!r}: the range is empty ({end} < {start})")
        return key, [str(v) for v in range(start, end + 1)]
    values = spec.split(",")
    if any(not v for v in values):
        raise InputError(f"--each {each!r}: an empty value")
    if len(set(values)) < len(values):
        raise InputError(f"--each {each!r}: a value given twice")
    return key, values


def override_stages(plan: PipelinePlan, assignments: Sequence[str]) -> PipelinePlan:
    """``--set`` for a pipeline: ``STAGE:params.K=V`` changes one stage; ``params.K=V`` (or ``args.``)
    every stage whose recipe has that key, ``env.K=V`` every stage. One that changes nothing is refused."""
    stages = list(plan.stages)
    by_name = {s.name: i for i, s in enumerate(stages)}
    for item in assignments:
        head, colon, rest = item.partition(":")
        if colon and "=" not in head:
            if head not in by_name:
                raise InputError(f"--set {item!r}: no stage {head!r}; stages: {', '.join(by_name)}")
            targets, assignment = [by_name[head]], rest
        else:
            targets = [i for i, s in enumerate(stages) if _has_key(s.recipe, item.partition("=")[0])]
            assignment = item
            if not targets:
                raise InputError(f"--set {item!r}: no stage's recipe has that key (STAGE:{item} adds it to one)")
        for i in targets:
            stages[i] = msgspec.structs.replace(stages[i], recipe=apply_overrides(stages[i].recipe, [assignment]))
    return msgspec.structs.replace(plan, stages=stages)


def _has_key(recipe: Recipe, dotted_key: str) -> bool:
    section, _, name = dotted_key.partition(".")
    if section == "env":
        return True
    if section == "args":
        return name in recipe.args
    return section == "params" and param_exists(recipe.params, name)


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
