"""Turning a recipe into a submitted run: validate, resolve, render, decide the cache, record.

Everything that can be checked is checked before anything is appended; the
events of one submission are appended in one transaction.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tomllib
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import psycopg

import projections
from events import ConcurrencyError, NewEvent
from events.queries import load_queries
from events.types import (
    InputRef,
    OutputSpec,
    RunSubmitted,
)
from labctl import cache, fanout, layout
from labctl.app import App
from labctl.artifacts import (
    ContextInput,
    ContextOutput,
    RunContext,
    artifact_id,
    dir_content_hash,
    path_identity_hash,
    write_context,
)
from labctl.cache_key import KeyParts, explain, key_parts
from labctl.errors import DatabaseUnavailable, InputError, UserError
from labctl.files import (
    ArtifactInput,
    CheckpointInput,
    ExternalInput,
    FileFormatError,
    FromInput,
    Recipe,
    StageInput,
    recipe_hash,
    render_aliases,
    render_recipe,
    template_values,
    validate_recipe,
)
from labctl.files import InputRef as TemplateInput
from labctl.ids import new_run_id
from labctl.jobenv import wandb_url
from labctl.linking import producer_outputs, write_linked_alias_links
from labctl.lookup import alias_target
from labctl.names import check_name, inside
from labctl.packing import refuse_if_never_fits
from labctl.provenance import Source, capture_provenance, inspect_repo, snapshot
from labctl.realpath import resolved
from labctl.retry import retry_on_conflict
from labctl.secrets import split_secrets, write_secrets

QUERIES = load_queries("labctl", "artifacts.sql")


class StageContext(msgspec.Struct, kw_only=True):
    """Where a run sits in a pipeline or sweep, and inputs resolved by the caller."""

    pipeline_id: str | None = None
    stage_name: str | None = None
    sweep_id: str | None = None
    sweep_index: int | None = None
    inputs: dict[str, InputRef] = {}


class PreparedRun(msgspec.Struct, kw_only=True):
    """A run ready to record: rendered, resolved, with its cache key."""

    run_id: str
    run_dir: str
    user: str
    executor: str
    recipe: Recipe  # rendered
    recipe_path: str
    inputs: list[InputRef]
    outputs: list[OutputSpec]
    cache_key: str
    key_parts: KeyParts
    recipe_hash: str  # of the recipe as written (before rendering)
    source: Source | None
    stage: StageContext
    #: secret env values, kept out of the log: written to the run dir's 0600 ``.lab/secrets.env``
    secrets: dict[str, str] = {}


class Submitted(msgspec.Struct, kw_only=True):
    run_id: str
    run_dir: str
    status: str
    cache_key: str | None = None
    producer_run_id: str | None = None
    job_id: str | None = None
    explanation: list[str] = []  # the cache key's parts, one per line (``run --explain-cache``)


# ------------------------------------------------------------ overrides


def apply_overrides(recipe: Recipe, assignments: Sequence[str]) -> Recipe:
    """``--set params.K=V`` (V read as a TOML value, else a string), ``args.K=V``, ``env.K=V``."""
    params = dict(recipe.params)
    args = dict(recipe.args)
    env = dict(recipe.env)
    for item in assignments:
        key, sep, raw = item.partition("=")
        section, _, name = key.partition(".")
        if not sep or not name or section not in {"params", "args", "env"}:
            raise InputError(f"--set {item!r}: expected params.KEY=VALUE, args.KEY=VALUE or env.KEY=VALUE")
        value: Any
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        except RecursionError:
            raise InputError(f"--set {key}: the value is nested too deeply") from None
        if section == "params":
            target = params
            *parents, leaf = name.split(".")
            for p in parents:
                child = target.get(p)
                target[p] = dict(child) if isinstance(child, dict) else {}
                target = target[p]
            target[leaf] = value
        elif section == "args":
            args[name] = raw
        else:
            env[name] = raw
    changed = msgspec.structs.replace(recipe, params=params, args=args, env=env)
    # The overridden recipe must pass the same checks as a file (env names, values the log can hold).
    validate_recipe(changed, "--set", pipeline=True, eval_policy=True)
    return changed


# ------------------------------------------------------------ resolution


def resolve_alias(conn: psycopg.Connection[Any], user: str, ref: str) -> tuple[str, str, str, str] | None:
    """``(artifact id, path, hash, alias)`` of an artifact id (or unambiguous prefix), else of an alias.

    The original's order: an artifact id first, then the alias namespace
    shared by all users (``owner/name`` picks one user's alias).
    """
    if ref.startswith("artifact_"):
        rows = conn.execute(QUERIES["live_artifacts_from"], {"pattern": ref + "%"}).fetchall()
        if len(rows) != 1:
            return None
        aid, apath, digest, step = rows[0]
        return aid, apath, digest, artifact_alias(conn, aid, apath, step)
    target = alias_target(conn, ref)
    if target is None:
        return None
    found = conn.execute(QUERIES["live_artifact"], {"alias": ref.rpartition("/")[2], "id": target}).fetchone()
    return found


def artifact_alias(conn: psycopg.Connection[Any], artifact_id: str, path: str, step: int | None) -> str:
    """What ``{inputs.R.alias}`` reads for an input given as an artifact rather than by its alias.

    A checkpoint step reads ``<stream alias>_<step dir>`` (the stream's alias moves on to
    newer steps, so it cannot tell two evals apart); any other artifact reads the alias
    last set on it, else its id.
    """
    if step is not None:
        where = Path(path)
        return f"{where.parent.name}_{where.name}"
    row = conn.execute(QUERIES["latest_alias_of"], {"id": artifact_id}).fetchone()
    return str(row[0]) if row else artifact_id


def resolve_inputs(
    conn: psycopg.Connection[Any], recipe: Recipe, path: str, user: str, stage: StageContext
) -> list[InputRef]:
    resolved = []
    for role, spec in recipe.inputs.items():
        if role in stage.inputs:  # filled by the caller: a pipeline stage, a pin, an eval policy's checkpoint
            resolved.append(stage.inputs[role])
        elif isinstance(spec, ArtifactInput):
            found = resolve_alias(conn, user, spec.artifact)
            if found is None:
                raise FileFormatError(
                    path, f"inputs.{role}.artifact", f"no artifact with id or alias {spec.artifact!r}"
                )
            artifact_id, apath, digest, alias = found
            resolved.append(
                InputRef(role=role, type="artifact", path=apath, artifact_id=artifact_id, alias=alias, hash=digest)
            )
        elif isinstance(spec, ExternalInput):
            if not os.path.exists(spec.path):
                raise FileFormatError(path, f"inputs.{role}.path", f"{spec.path} does not exist")
            resolved.append(InputRef(role=role, type="external", path=spec.path, hash=path_identity_hash(spec.path)))
        elif isinstance(spec, StageInput | FromInput | CheckpointInput):
            kind = {StageInput: "a pipeline stage", FromInput: "a pinned run", CheckpointInput: "an eval policy"}
            raise FileFormatError(
                path, f"inputs.{role}.type", f"this input is filled by {kind[type(spec)]}; run it through that"
            )
    return resolved


def _template_input(ref: InputRef) -> TemplateInput:
    """An external path's id is the one ``register-external`` gives that path; it has no alias."""
    if ref.type == "external" and ref.hash:
        return TemplateInput(path=ref.path, id=artifact_id(ref.hash))
    return TemplateInput(path=ref.path, id=ref.artifact_id, alias=ref.alias)


def _output_specs(app: App, recipe: Recipe, path: str, aliases: Mapping[str, str]) -> list[OutputSpec]:
    roots = app.config.filesystem.output_roots
    specs = []
    for role, out in recipe.outputs.items():
        root = roots.get(out.type)
        if root is None:
            raise FileFormatError(
                path, f"outputs.{role}.type", f"the cluster config has no output root for {out.type!r}"
            )
        try:
            alias = check_name("alias", aliases[role])
            out_path = inside(root, Path(root) / check_name("user name", app.user) / alias)
        except ValueError as exc:
            raise FileFormatError(path, f"outputs.{role}.alias", str(exc)) from None
        specs.append(
            OutputSpec(
                role=role,
                type=out.type,
                path=str(out_path),
                alias=aliases[role],
                marker=out.marker,
            )
        )
    return specs


def _refuse_existing_markers(outputs: Sequence[OutputSpec], path: str) -> None:
    for out in outputs:
        if not out.marker:
            continue
        base = Path(out.path)
        hits = list(base.glob(f"*/{out.marker}")) if out.type == "checkpoint_stream" else [base / out.marker]
        existing = [h for h in hits if h.exists()]
        if existing:
            raise FileFormatError(
                path,
                f"outputs.{out.role}.marker",
                f"{existing[0]} already exists; remove it or choose another alias",
            )


def prepare(
    app: App,
    recipe: Recipe,
    recipe_path: str | Path,
    *,
    stage: StageContext | None = None,
    executor: str | None = None,
    run_id: str | None = None,
) -> PreparedRun:
    """Resolve and render a recipe into a run (reads the database, writes nothing)."""
    stage = stage or StageContext()
    path = str(recipe_path)
    env, secrets = split_secrets(recipe.env)
    recipe = msgspec.structs.replace(recipe, env=env)  # the log and the cache key see ${NAME}, never the value
    run_id = run_id or new_run_id()
    run_dir = str(layout.run_dir(app.config.filesystem.runs_base, app.user, run_id))
    executor = executor or app.executor
    if executor not in {"local", "slurm"}:
        raise InputError(f"--executor {executor!r}: expected local or slurm")
    if executor == "local":
        refuse_if_never_fits(app.config.local, recipe.resources, _named(recipe, stage))
    inputs = resolve_inputs(app.db.conn, recipe, path, app.user, stage)
    source = None
    if recipe.repo is not None:
        repo_path = app.config.repos.get(recipe.repo)
        if repo_path is None:
            known = ", ".join(sorted(app.config.repos)) or "none"
            raise FileFormatError(path, "repo", f"unknown repo {recipe.repo!r} (the cluster config has: {known})")
        source = inspect_repo(recipe.repo, repo_path)
    refs = {i.role: _template_input(i) for i in inputs}
    values = template_values(run_id=run_id, run_dir=run_dir, user=app.user, inputs=refs)
    outputs = _output_specs(app, recipe, path, render_aliases(recipe, values, path))
    values = template_values(
        run_id=run_id, run_dir=run_dir, user=app.user, inputs=refs, output_paths={o.role: o.path for o in outputs}
    )
    rendered = render_recipe(recipe, values, path)
    parts = key_parts(app.db.conn, recipe, inputs, source)
    return PreparedRun(
        run_id=run_id,
        run_dir=run_dir,
        user=app.user,
        executor=executor,
        recipe=rendered,
        recipe_path=resolved(path) if path else "",
        inputs=inputs,
        outputs=outputs,
        cache_key=parts.key,
        key_parts=parts,
        recipe_hash=recipe_hash(recipe),
        source=source,
        stage=stage,
        secrets=secrets,
    )


def _named(recipe: Recipe, stage: StageContext) -> str:
    """How a refusal names the run: its stage (and sweep point) in a pipeline, else its recipe."""
    if stage.stage_name is None:
        return f"recipe {recipe.name}"
    point = f"point {stage.sweep_index} of " if stage.sweep_index is not None else ""
    return f"{point}stage {stage.stage_name}"


def write_run_dir(run: PreparedRun) -> None:
    """The run dir a job needs: its output directories, the source snapshot and ``.lab/context.json``."""
    run_dir = Path(run.run_dir)
    try:
        (run_dir / ".lab").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the run directory {run_dir}: {exc.strerror or exc}") from None
    for out in run.outputs:
        # A command writing `{outputs.R.path}/file` needs the directory, as in the original.
        try:
            Path(out.path).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the directory of output {out.role!r}: {exc}") from None
    write_secrets(run_dir, run.secrets)
    source_path = source_hash = provenance = None
    if run.source is not None:
        source_path = layout.source_dir(run_dir, run.source.repo)
        snapshot(run.source, source_path)
        source_hash = dir_content_hash(source_path)
        bundle = capture_provenance(run.source, layout.provenance_dir(run_dir, run.source.repo))
        provenance = msgspec.to_builtins(bundle)
    write_context(
        run_dir,
        RunContext(
            run_id=run.run_id,
            run_dir=run.run_dir,
            recipe_name=run.recipe.name,
            recipe_hash=run.recipe_hash,
            repo=run.source.repo if run.source else None,
            source_path=str(source_path) if source_path else None,
            source_hash=source_hash,
            inputs=[
                ContextInput(
                    role=i.role,
                    artifact_id=i.artifact_id,
                    resolved_path=i.path,
                    type=i.type,
                    alias=i.alias,
                )
                for i in run.inputs
            ],
            outputs={
                o.role: ContextOutput(role=o.role, kind=o.type, alias=o.alias, path=o.path, marker=o.marker)
                for o in run.outputs
            },
            params=run.recipe.params,
            provenance=provenance,
            stage_name=run.stage.stage_name,
            user=run.user,
            args=run.recipe.args,
        ),
    )


# --------------------------------------------------------------- recording


def submitted_event(run: PreparedRun, *, no_cache: bool) -> RunSubmitted:
    return RunSubmitted(
        run_id=run.run_id,
        name=run.recipe.name,
        user=run.user,
        executor=run.executor,
        run_dir=run.run_dir,
        recipe=msgspec.to_builtins(run.recipe),
        recipe_path=run.recipe_path or None,
        cache_key=run.cache_key,
        inputs=run.inputs,
        outputs=run.outputs,
        repo=run.source.repo if run.source else None,
        repo_commit=run.source.commit if run.source else None,
        repo_dirty=run.source.dirty if run.source else None,
        repo_diff=run.source.diff if run.source else None,
        pipeline_id=run.stage.pipeline_id,
        stage_name=run.stage.stage_name,
        sweep_id=run.stage.sweep_id,
        sweep_index=run.stage.sweep_index,
        no_cache=no_cache,
        tracking_url=wandb_url(run.recipe, run.run_id),
        cache_parts=run.key_parts.parts,
    )


def _decide(
    conn: psycopg.Connection[Any],
    run: PreparedRun,
    *,
    no_cache: bool,
    run_version: int,
    state: cache.CacheState | None = None,
) -> tuple[list[NewEvent], Submitted]:
    batch = [NewEvent(f"run-{run.run_id}", submitted_event(run, no_cache=no_cache), run_version)]
    result = Submitted(run_id=run.run_id, run_dir=run.run_dir, status="submitted", cache_key=run.cache_key)
    if no_cache:
        return batch, result
    decision = cache.decide(conn, run.run_id, run.user, run.cache_key, run.outputs, state)
    result.status, result.producer_run_id = decision.status, decision.producer_run_id
    return batch + decision.events, result


def record_submission(
    app: App, run: PreparedRun, *, no_cache: bool = False, run_version: int = 0, extra: Sequence[NewEvent] = ()
) -> Submitted:
    """Append the submission and its cache decision atomically (retrying lost cache races)."""
    idempotency = f"submit-{run.run_id}-{uuid.uuid4().hex}"

    def attempt(conn: psycopg.Connection[Any]) -> Submitted:
        batch, result = _decide(conn, run, no_cache=no_cache, run_version=run_version)
        projections.record(conn, [*extra, *batch], idempotency_key=idempotency, meta=app.meta())
        return result

    # Only a lost cache race is worth deciding again; another conflict (a pipeline stage already
    # submitted by someone else) is the caller's to handle.
    return retry_on_conflict(
        lambda: app.db.run(attempt),
        what=f"settle the cache decision for {run.cache_key}",
        only=lambda exc: exc.stream.startswith("cache-"),
    )


def submit(
    app: App,
    recipe: Recipe,
    recipe_path: str | Path,
    *,
    executor: str | None = None,
    no_cache: bool = False,
    stage: StageContext | None = None,
    run_id: str | None = None,
    run_version: int = 0,
    extra: Sequence[NewEvent] = (),
) -> Submitted:
    """Prepare, write the run dir, and record one run."""
    run = prepare(app, recipe, recipe_path, stage=stage, executor=executor, run_id=run_id)
    will_hit = _write_unless_hit(app, run, str(recipe_path), no_cache)
    try:
        result = record_submission(app, run, no_cache=no_cache, run_version=run_version, extra=extra)
    except DatabaseUnavailable:
        raise  # the commit may have happened unanswered: the run dir may be needed
    except BaseException:
        # Nothing was recorded: leave no orphan run dir. A pre-assigned id (a pipeline stage) may have
        # been recorded by a racing submitter (the CLI and an agent's advancer): that dir is theirs.
        if run_id is None:
            shutil.rmtree(run.run_dir, ignore_errors=True)
        raise
    return _after_record(app, run, result, will_hit)


def _write_unless_hit(app: App, run: PreparedRun, recipe_path: str, no_cache: bool) -> bool:
    """Write the run dir unless the cache will hit (then nothing runs there); whether it will hit."""
    will_hit = _peek_hit(app, run, recipe_path, no_cache)
    if not will_hit:
        write_run_dir(run)
    return will_hit


def _peek_hit(
    app: App, run: PreparedRun, recipe_path: str, no_cache: bool, peek: cache.CacheState | None = None
) -> bool:
    """Whether the cache will hit; when not, the run is to write its outputs, and none may be there yet.
    ``peek``: the key's state, when read already."""
    if peek is None and not no_cache:
        peek = cache.load(app.db.conn, run.cache_key)
    will_hit = peek is not None and peek.state == "succeeded"
    if not will_hit:
        _refuse_existing_markers(run.outputs, recipe_path)
    return will_hit


def _after_record(app: App, run: PreparedRun, result: Submitted, will_hit: bool) -> Submitted:
    """What follows a recorded submission: the key's explanation, the run dir or the cache hit's links."""
    result.explanation = explain(
        run.cache_key,
        run.key_parts.parts,
        fingerprints=run.key_parts.fingerprints,
        inputs=run.inputs,
        repo=run.recipe.repo,
    )
    if result.status != "cache_hit" and will_hit:
        write_run_dir(run)  # the cache entry vanished between the peek and the decision
    if result.status == "cache_hit" and result.producer_run_id:
        linked = producer_outputs(app.db.conn, result.producer_run_id) or []
        write_linked_alias_links(app.config, run.user, run.outputs, linked)
    return result


@dataclasses.dataclass(frozen=True)
class Request:
    """One run for ``submit_many``: what ``submit`` takes, and the user it is submitted as."""

    recipe: Recipe
    recipe_path: str
    user: str
    executor: str | None = None
    no_cache: bool = False
    stage: StageContext | None = None
    run_id: str | None = None
    run_version: int = 0
    #: the run already prepared from these fields (a pipeline's root, prepared to check it): not prepared again
    prepared: PreparedRun | None = None


#: what a submission can fail with that is the submitted run's, not the submitter's (it ends the run)
SUBMISSION_ERRORS = (UserError, FileFormatError, OSError, ConcurrencyError)


@dataclasses.dataclass
class Staged:
    """Runs of ``submit_many`` prepared and their run dirs written, not yet recorded (``stage_many``)."""

    results: list[Submitted | Exception | None]  # an exception in place of each run that could not be
    ready: list[tuple[int, App, Request, PreparedRun, bool]]  # (index, as user, request, run, will hit)
    #: the cache keys' states as read to decide whether each run will hit: the decisions are made on them
    #: too (each decision expects its key's version, so a state that moved meanwhile fails the append)
    peeks: dict[str, cache.CacheState]

    def discard(self) -> None:
        """Remove the run dirs written: nothing of them was recorded (the caller records none of it)."""
        for _, _, _, run, _ in self.ready:
            shutil.rmtree(run.run_dir, ignore_errors=True)


def submit_many(app: App, requests: Sequence[Request]) -> list[Submitted | Exception]:
    """Submit several runs as ``submit`` does each, with one transaction for all their records.

    Each run is prepared and its run dir written on its own; a run that cannot be (a ``SUBMISSION_ERRORS``)
    gets its exception in its place and the others go on. Then every submission and cache decision is
    appended together, or none is. When that loses a race (a run submitted meanwhile by another agent, a
    cache key taken) or two runs share a cache key (the second must see the first's decision), the runs
    are recorded one by one instead, exactly as ``submit`` records them.
    """
    return record_staged(app, stage_many(app, requests))


def stage_many(app: App, requests: Sequence[Request]) -> Staged:
    """``submit_many``'s work before its transaction: prepare each run and write its run dir (no append)."""
    results: list[Submitted | Exception | None] = []
    runs: list[tuple[int, App, Request, PreparedRun]] = []
    for i, req in enumerate(requests):
        as_user = app if req.user == app.user else dataclasses.replace(app, user=req.user)
        try:
            run = req.prepared or prepare(
                as_user, req.recipe, req.recipe_path, stage=req.stage, executor=req.executor, run_id=req.run_id
            )
        except DatabaseUnavailable:
            raise
        except SUBMISSION_ERRORS as exc:
            results.append(exc)
            continue
        results.append(None)  # filled once recorded
        runs.append((i, as_user, req, run))
    peeks = cache.load_many(app.db.conn, [run.cache_key for _, _, req, run in runs if not req.no_cache])
    prepared: list[tuple[int, App, Request, PreparedRun, bool]] = []
    for i, as_user, req, run in runs:
        try:
            will_hit = _peek_hit(as_user, run, req.recipe_path, req.no_cache, peeks.get(run.cache_key))
        except SUBMISSION_ERRORS as exc:
            results[i] = exc
            continue
        prepared.append((i, as_user, req, run, will_hit))
    # The run dirs, each ending in its context.json's fsync, are written together (no database here).
    written = fanout.each(lambda r: None if r[4] else write_run_dir(r[3]), prepared, SUBMISSION_ERRORS)
    ready: list[tuple[int, App, Request, PreparedRun, bool]] = []
    for r, error in zip(prepared, written, strict=True):
        if isinstance(error, Exception):
            results[r[0]] = error
        else:
            ready.append(r)
    return Staged(results, ready, peeks)


def record_staged(
    app: App,
    staged: Staged,
    *,
    extra: Sequence[NewEvent] = (),
    key: str | None = None,
    extra_alone: Callable[[], object] | None = None,
) -> list[Submitted | Exception]:
    """Record what ``stage_many`` prepared: every submission and cache decision in one append, after
    ``extra`` (events that must commit with them, such as the pipeline these runs belong to). ``key``:
    the append's idempotency key, when the caller's transaction may be retried whole (else a fresh one).
    ``extra_alone``: what records ``extra`` instead when that append loses a race (events that may
    themselves lose one, such as the pipelines a tick closes); by default ``extra`` is appended alone."""
    results, ready = staged.results, staged.ready
    uses = Counter(run.cache_key for _, _, req, run, _ in ready if not req.no_cache)
    together = [r for r in ready if uses[r[3].cache_key] <= 1 or r[2].no_cache]
    alone = [r for r in ready if uses[r[3].cache_key] > 1 and not r[2].no_cache]
    try:
        recorded = _record_together(app, together, extra, key, staged.peeks)
        for (i, as_user, _, run, will_hit), result in zip(together, recorded, strict=True):
            results[i] = _after_record(as_user, run, result, will_hit)
    except ConcurrencyError:
        alone = ready
        if extra and extra_alone is not None:
            extra_alone()
        elif extra:
            app.record(extra, f"extra-{ready[0][3].run_id if ready else 'none'}-{uuid.uuid4().hex}")
    except DatabaseUnavailable:
        raise
    except BaseException:
        for _, _, req, run, _ in ready:
            if req.run_id is None:
                shutil.rmtree(run.run_dir, ignore_errors=True)
        raise
    for i, as_user, req, run, will_hit in alone:
        try:
            result = record_submission(as_user, run, no_cache=req.no_cache, run_version=req.run_version)
        except DatabaseUnavailable:
            raise
        except SUBMISSION_ERRORS as exc:
            if req.run_id is None:
                shutil.rmtree(run.run_dir, ignore_errors=True)
            results[i] = exc
            continue
        results[i] = _after_record(as_user, run, result, will_hit)
    return [r if r is not None else RuntimeError("not recorded") for r in results]


def _record_together(
    app: App,
    runs: Sequence[tuple[int, App, Request, PreparedRun, bool]],
    extra: Sequence[NewEvent] = (),
    key: str | None = None,
    peeks: dict[str, cache.CacheState] | None = None,
) -> list[Submitted]:
    """Every run's submission and cache decision in one transaction (one append per submitting user;
    ``extra`` in the first, before them)."""
    if not runs and not extra:
        return []
    first = runs[0][3].run_id if runs else extra[0].stream
    idempotency = key or f"submit-{first}-{len(runs)}-{uuid.uuid4().hex}"

    def attempt(conn: psycopg.Connection[Any]) -> list[Submitted]:
        results: list[Submitted] = []
        by_user: dict[str, tuple[App, list[NewEvent]]] = {app.user: (app, list(extra))} if extra else {}
        # the keys are distinct (runs sharing one are recorded one by one), so each state holds for its run
        keys = [run.cache_key for _, _, req, run, _ in runs if not req.no_cache]
        states = peeks if peeks is not None and all(k in peeks for k in keys) else cache.load_many(conn, keys)
        for _, as_user, req, run, _ in runs:
            batch, result = _decide(
                conn, run, no_cache=req.no_cache, run_version=req.run_version, state=states.get(run.cache_key)
            )
            by_user.setdefault(as_user.user, (as_user, []))[1].extend(batch)
            results.append(result)
        for user, (as_user, batch) in by_user.items():
            if batch:
                projections.record(
                    conn, batch, idempotency_key=f"{idempotency}-{user}", meta=as_user.meta(), savepoint=False
                )
        return results

    return app.db.run(attempt)
