"""Advancing a pipeline: submit runs whose parents succeeded, fail those whose parents did not,
close the pipeline when every run has ended (called by the advancer reactor and after creation)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Sequence
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
from labctl.submit import Request, StageContext, artifact_alias, record_staged, stage_many
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


Loaded = tuple[PipelineRow, list[StageRow], dict[str, RunRow]]


def load_many(conn: psycopg.Connection[Any], pipeline_ids: Sequence[str]) -> dict[str, Loaded]:
    """``load`` for several pipelines in three queries (the advancer's page, its full pass)."""
    ids = {"ids": list(pipeline_ids)}
    stages: dict[str, list[StageRow]] = {}
    for pid, name, run_ids, parents in conn.execute(QUERIES["stages_many"], ids):
        stages.setdefault(pid, []).append(StageRow(name, run_ids, parents))
    runs: dict[str, dict[str, RunRow]] = {}
    for pid, *row in conn.execute(QUERIES["runs_many"], ids):
        run = RunRow(*row)
        runs.setdefault(pid, {})[run.id] = run
    return {
        pid: (PipelineRow(pid, status, from_run, user), stages.get(pid, []), runs.get(pid, {}))
        for pid, status, from_run, user in conn.execute(QUERIES["pipelines_many"], ids)
    }


def _wave(stages: list[StageRow], runs: dict[str, RunRow]) -> tuple[list[tuple[RunRow, str]], list[RunRow]]:
    """What one wave does: the waiting runs to end ``dependency_failed`` (with why), the waiting runs to submit."""
    run_ids_of = {stage.name: stage.run_ids for stage in stages}
    doomed: list[tuple[RunRow, str]] = []
    ready: list[RunRow] = []
    for stage in stages:
        waiting = [runs[r] for r in stage.run_ids if r in runs and runs[r].status == "created"]
        if not waiting:
            continue
        parent_states = {p: stage_state(run_ids_of[p], runs) for p in stage.parents}
        failed = [(p, cause) for p, (state, cause) in parent_states.items() if state == "failed"]
        if failed:
            p, cause = failed[0]
            doomed += [(row, f"parent stage {p} failed: {cause}") for row in waiting]
        elif all(state == "succeeded" for state, _ in parent_states.values()):
            ready += waiting
    return doomed, ready


def _all_ended(stages: list[StageRow], runs: dict[str, RunRow]) -> bool:
    return all(r in runs and runs[r].status in TERMINAL_STATES for stage in stages for r in stage.run_ids)


def advance(app: App, pipeline_id: str) -> bool:
    """Submit what can run, fail what cannot, close the pipeline when done; True if anything changed."""
    changed = False
    for _ in range(1000):  # each pass handles one wave; cache-hit chains take several
        step, ended = _advance_once(app, pipeline_id)
        changed |= step
        if not ended:
            break  # runs that were only queued cannot release anything else yet
    return changed


def advance_many(app: App, pipeline_ids: Sequence[str], *, user: str | None = None) -> bool:
    """``advance`` each pipeline, in bulk: one read of them all, every run ready to start submitted in one
    append (``submit_many``) with every finished pipeline closed; pipelines with nothing to do cost
    nothing more. A pipeline whose wave ends runs (a cache hit, a failed parent) goes on through ``advance``.
    ``user``: only that user's pipelines (an agent never submits as another user); None: everyone's."""
    loaded = load_many(app.db.conn, pipeline_ids)
    todo: list[tuple[PipelineRow, dict[str, list[str]], dict[str, RunRow], RunRow]] = []
    closing: list[Loaded] = []
    again: list[str] = []
    for pid in pipeline_ids:
        if pid not in loaded or loaded[pid][0].status != "running" or user not in (None, loaded[pid][0].user):
            continue
        pipeline, stages, runs = loaded[pid]
        doomed, ready = _wave(stages, runs)
        if doomed:
            again.append(pid)  # rare: the one-by-one path ends them and goes on
        elif ready:
            run_ids_of = {stage.name: stage.run_ids for stage in stages}
            todo += [(pipeline, run_ids_of, runs, row) for row in ready]
        elif _all_ended(stages, runs):
            closing.append(loaded[pid])
    # the pipelines that close go into the released runs' append (one append where there were two)
    outcomes, closed = _submit_waiting(app, todo, closing) if todo else ([], _close_many(app, closing))
    again += sorted({pipeline.id for (pipeline, *_), outcome in zip(todo, outcomes, strict=True) if outcome == "ended"})
    changed = closed or any(o is not None for o in outcomes)
    for pid in again:
        changed |= advance(app, pid)
    return changed


def _advance_once(app: App, pipeline_id: str) -> tuple[bool, bool]:
    """One wave: ``(anything changed, some run ended)``; only an ended run can make another wave."""
    pipeline, stages, runs = load(app.db.conn, pipeline_id)
    if pipeline is None or pipeline.status != "running":
        return False, False
    changed = ended = False
    doomed, ready = _wave(stages, runs)
    for row, reason in doomed:
        if _end_dependency_failed(app, row, reason):
            changed = ended = True
    run_ids_of = {stage.name: stage.run_ids for stage in stages}
    for outcome in _submit_waiting(app, [(pipeline, run_ids_of, runs, row) for row in ready])[0]:
        changed |= outcome is not None
        ended |= outcome == "ended"
    if not changed and _all_ended(stages, runs):
        changed = _close_many(app, [(pipeline, stages, runs)])
    return changed, ended


def _end_dependency_failed(app: App, row: RunRow, reason: str) -> bool:
    end = RunFinished(run_id=row.id, state="dependency_failed", reason=reason, finished_at=datetime.now(UTC))
    try:
        app.record([NewEvent(f"run-{row.id}", end, row.version)], f"depfail-{row.id}")
    except ConcurrencyError:
        return False
    return True


def _pendings_of(conn: psycopg.Connection[Any], run_ids: Sequence[str]) -> dict[str, RunPending]:
    """Each run's ``RunPending`` (what its stage planned), read in one query."""
    found: dict[str, RunPending] = {}
    streams = events.read_streams(conn, [f"run-{r}" for r in run_ids])
    for run_id in run_ids:
        pending = next((e.data for e in streams.get(f"run-{run_id}", []) if isinstance(e.data, RunPending)), None)
        if pending is not None:
            found[run_id] = pending
    return found


def _submit_waiting(
    app: App,
    waiting: Sequence[tuple[PipelineRow, dict[str, list[str]], dict[str, RunRow], RunRow]],
    closing: Sequence[Loaded] = (),
) -> tuple[list[str | None], bool]:
    """Submit waiting runs together (``submit_many``): per run ``"queued"``, ``"ended"`` (a cache hit or a
    failed submission, recorded as the run's end) or None (nothing: another agent submitted it first).
    ``closing``: pipelines to close in the same append (``_close_many``; on its own when that append loses
    a race); with whether any was closed here."""
    conn = app.db.conn
    outcomes: list[str | None] = [None] * len(waiting)
    requests: list[Request] = []
    which: list[int] = []
    pendings = _pendings_of(conn, [row.id for *_, row in waiting])
    recipes = {run_id: recipe_of(pending) for run_id, pending in pendings.items()}
    parents = ParentOutputs(conn)
    parents.read(
        pair
        for pipeline, run_ids_of, _runs, row in waiting
        if row.id in recipes
        for pair in parents.wanted(recipes[row.id], pipeline, run_ids_of)
    )
    for i, (pipeline, run_ids_of, _runs, row) in enumerate(waiting):
        pending = pendings.get(row.id)
        if pending is None:
            continue
        try:
            requests.append(
                request_of(conn, pending, pipeline, run_ids_of, row.version, recipe=recipes[row.id], parents=parents)
            )
        except (UserError, FileFormatError, OSError) as exc:
            outcomes[i] = _failed_submission(app, row, exc)
            continue
        which.append(i)
    close = _close_events_of(app, closing)
    alone: list[bool] = []  # when the one append lost a race: whether _close_many closed any on its own
    submitted = record_staged(
        app, stage_many(app, requests), extra=close, extra_alone=lambda: alone.append(_close_many(app, closing))
    )
    for i, result in zip(which, submitted, strict=True):
        row = waiting[i][3]
        if isinstance(result, ConcurrencyError):
            outcomes[i] = None  # another agent submitted it first
        elif isinstance(result, Exception):
            outcomes[i] = _failed_submission(app, row, result)
        else:
            outcomes[i] = "ended" if result.status in TERMINAL_STATES else "queued"
    return outcomes, alone[0] if alone else bool(close)


def recipe_of(pending: RunPending) -> Recipe:
    """The recipe a waiting run's ``RunPending`` planned (a sweep point's with its index)."""
    recipe = msgspec.convert(pending.recipe, Recipe)
    if pending.sweep_index is not None:
        recipe = with_index(recipe, pending.sweep_index)
    return recipe


def request_of(
    conn: psycopg.Connection[Any],
    pending: RunPending,
    pipeline: PipelineRow,
    run_ids_of: dict[str, list[str]],
    version: int,
    *,
    recipe: Recipe | None = None,
    parents: ParentOutputs | None = None,
) -> Request:
    """The submission a waiting run's ``RunPending`` plans, its stage and pinned inputs resolved now
    (raises ``UserError``, ``FileFormatError`` or ``OSError`` when one cannot be). ``recipe``: its
    ``recipe_of``, when parsed already; ``parents``: the parents' outputs, when read already."""
    recipe = recipe or recipe_of(pending)
    parents = parents or ParentOutputs(conn)
    inputs = {
        role: _resolve_stage_input(conn, parents, spec, pipeline, run_ids_of, Path(pending.run_dir), role)
        for role, spec in recipe.inputs.items()
        if isinstance(spec, StageInput | FromInput)
    }
    stage = StageContext(
        pipeline_id=pending.pipeline_id,
        stage_name=pending.stage_name,
        sweep_id=pending.sweep_id,
        sweep_index=pending.sweep_index,
        inputs=inputs,
    )
    return Request(
        recipe=recipe,
        recipe_path=pending.recipe_path or "",
        user=pending.user,
        executor=pending.executor,
        no_cache=pending.no_cache,
        stage=stage,
        run_id=pending.run_id,
        run_version=version,
    )


def _failed_submission(app: App, row: RunRow, exc: Exception) -> str | None:
    end = RunFinished(run_id=row.id, state="failed", reason=f"could not submit: {exc}", finished_at=datetime.now(UTC))
    try:
        app.record([NewEvent(f"run-{row.id}", end, row.version)], f"subfail-{row.id}-{uuid.uuid4().hex}")
    except ConcurrencyError:
        return None
    return "ended"


class StageOutput(msgspec.Struct, frozen=True):
    """One artifact a run registered for an output role (a checkpoint stream: one per step)."""

    artifact_id: str
    path: str
    hash: str
    step: int | None


class ParentOutputs:
    """The outputs that parent runs registered for a role, and the alias each gives it: read for many
    children at once (``read``: the runs released by a tick's ends), else one pair at a time."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self._outputs: dict[tuple[str, str], list[StageOutput]] = {}
        self._aliases: dict[tuple[str, str], str | None] = {}

    @staticmethod
    def wanted(recipe: Recipe, pipeline: PipelineRow, run_ids_of: dict[str, list[str]]) -> list[tuple[str, str]]:
        """The (run, role) pairs whose outputs ``recipe``'s stage and pinned inputs read."""
        pairs = []
        for spec in recipe.inputs.values():
            if isinstance(spec, StageInput):
                pairs += [(run_id, spec.role) for run_id in run_ids_of.get(spec.stage, [])]
            elif isinstance(spec, FromInput) and pipeline.from_run is not None:
                pairs.append((pipeline.from_run, spec.role))
        return pairs

    def read(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Read the pairs' outputs and aliases not read yet, in one query each."""
        todo = [pair for pair in dict.fromkeys(pairs) if pair not in self._aliases]
        if not todo:
            return
        params = {"run_ids": [run_id for run_id, _ in todo], "roles": [role for _, role in todo]}
        for pair in todo:
            self._outputs[pair] = []
        for run_id, role, *row in self.conn.execute(QUERIES["outputs_of_roles"], params):
            self._outputs[(run_id, role)].append(StageOutput(*row))
        self._aliases.update(dict.fromkeys(todo))
        for run_id, role, alias in self.conn.execute(QUERIES["output_aliases"], params):
            self._aliases[(run_id, role)] = alias

    def outputs(self, run_id: str, role: str) -> list[StageOutput]:
        self.read([(run_id, role)])
        return self._outputs[(run_id, role)]

    def alias(self, run_id: str, role: str) -> str | None:
        """The alias a run's recipe (as submitted, rendered) gives its output ``role``."""
        self.read([(run_id, role)])
        return self._aliases[(run_id, role)] or None


def _input_of_run(
    conn: psycopg.Connection[Any],
    parents: ParentOutputs,
    run_id: str,
    role: str,
    input_role: str,
    *,
    newest_step: bool = False,
) -> InputRef:
    """The input a run's output ``role`` makes: its artifact, or a checkpoint stream's directory of steps.

    ``newest_step``: a stream gives its newest step's artifact instead, as the original's ``from`` pins do.
    """
    outs = parents.outputs(run_id, role)
    if not outs:
        raise UserError(f"run {run_id} registered no output {role!r}")
    alias = parents.alias(run_id, role)
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


def _resolve_stage_input(
    conn: psycopg.Connection[Any],
    parents: ParentOutputs,
    spec: StageInput | FromInput,
    pipeline: PipelineRow,
    run_ids_of: dict[str, list[str]],
    run_dir: Path,
    role: str,
) -> InputRef:
    if isinstance(spec, FromInput):
        assert pipeline.from_run is not None  # planning refused a "from" input without a pin
        ref = _input_of_run(conn, parents, pipeline.from_run, spec.role, role, newest_step=True)
        return msgspec.structs.replace(ref, type="from")
    parent_runs = run_ids_of[spec.stage]
    if len(parent_runs) == 1:
        return _input_of_run(conn, parents, parent_runs[0], spec.role, role)
    # A sweep stage: a directory of links named by point, one per run.
    folder = run_dir / ".lab" / "inputs" / role
    folder.mkdir(parents=True, exist_ok=True)
    digests = []
    for i, run_id in enumerate(parent_runs):
        ref = _input_of_run(conn, parents, run_id, spec.role, role)
        link = folder / str(i)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(ref.path, link)
        digests.append(ref.hash or ref.path)
    digest = hashlib.sha256("\n".join(digests).encode()).hexdigest()
    return InputRef(role=role, type="stage", path=str(folder), hash=digest)


def _close_events(
    pipeline_id: str, stages: list[StageRow], runs: dict[str, RunRow], sweeps: list[tuple[str, str, list[str]]]
) -> list[NewEvent]:
    """PipelineFinished (and SweepFinished for a sweep stage still running) for a pipeline whose runs all ended."""
    batch: list[NewEvent] = []
    for stage in stages:
        sweep = next(((sid, status) for sid, status, run_ids in sweeps if stage.run_ids[0] in run_ids), None)
        if sweep and sweep[1] == "running":
            state, _ = stage_state(stage.run_ids, runs)
            batch.append(NewEvent(f"sweep-{sweep[0]}", SweepFinished(sweep_id=sweep[0], state=state), 1))
    failed = [(st.name, c) for st in stages for s, c in [stage_state(st.run_ids, runs)] if s != "succeeded"]
    state = "failed" if failed else "succeeded"
    ends = {runs[r].status for stage in stages for r in stage.run_ids}
    if failed and "cancelled" in ends and not ends & HARD_FAILURES:
        state = "cancelled"  # stopped on purpose (`labctl cancel`), not broken
    reason = f"stage {failed[0][0]}: {failed[0][1]}" if failed else None
    finished = PipelineFinished(pipeline_id=pipeline_id, state=state, reason=reason)
    return [NewEvent(f"pipeline-{pipeline_id}", finished, 1), *batch]


def _close_events_of(app: App, closing: Sequence[Loaded]) -> list[NewEvent]:
    """The events that close pipelines whose runs all ended (``_close_events`` of each)."""
    if not closing:
        return []
    sweeps: dict[str, list[tuple[str, str, list[str]]]] = {}
    ids = [pipeline.id for pipeline, _, _ in closing]
    for pid, sid, status, run_ids in app.db.conn.execute(QUERIES["sweeps_of_pipelines"], {"ids": ids}):
        sweeps.setdefault(pid, []).append((sid, status, run_ids))
    return [e for p, stages, runs in closing for e in _close_events(p.id, stages, runs, sweeps.get(p.id, []))]


def _close_many(app: App, closing: Sequence[Loaded]) -> bool:
    """Close pipelines whose runs all ended, in one transaction; if one was closed meanwhile (another
    agent), each is closed on its own. True if any was closed here."""
    if not closing:
        return False
    ids = [pipeline.id for pipeline, _, _ in closing]
    try:
        # the key names exactly these pipelines: a retry of an unanswered commit is harmless
        which = ids[0] if len(ids) == 1 else hashlib.sha256(",".join(ids).encode()).hexdigest()[:24]
        app.record(_close_events_of(app, closing), f"close-{which}")
    except ConcurrencyError:
        if len(closing) == 1:
            return False
        return any([_close_many(app, [one]) for one in closing])
    return True


def running_pipelines(conn: psycopg.Connection[Any], user: str | None = None) -> list[str]:
    """Running pipelines (only ``user``'s when given), oldest first."""
    rows = conn.execute(QUERIES["running_pipelines"], {"user": user})
    return [r[0] for r in rows]
