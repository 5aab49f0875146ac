"""Eval policies: evaluate each matching checkpoint once per eval recipe, record the metrics.

The exactly-once decision is the ``eval-<key>`` stream, where the key is the
hash of (checkpoint artifact id, eval recipe hash): its first event can only
be appended once, together with the eval run's submission.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from events import ConcurrencyError, NewEvent
from events.queries import load_queries, rows_as
from events.types import EvalRecorded, EvalRequested, InputRef
from labctl.app import App
from labctl.errors import UserError
from labctl.files import (
    EvalPolicy,
    Recipe,
    checkpoint_role,
    load_policies,
    load_policy,
    policy_recipe,
    recipe_hash,
)
from labctl.packing import refuse_if_never_fits
from labctl.submit import StageContext, artifact_alias, submit

QUERIES = load_queries("labctl", "evals.sql")


class Checkpoint(msgspec.Struct):
    id: str
    path: str
    hash: str
    kind: str
    user: str
    step: int | None
    producer_recipe: str | None


def eval_key(checkpoint_id: str, eval_recipe_hash: str) -> str:
    return hashlib.sha256(f"{checkpoint_id}\n{eval_recipe_hash}".encode()).hexdigest()[:32]


def policies(app: App) -> list[EvalPolicy]:
    folder = app.config.dispatch.policies_dir
    return load_policies(folder) if folder and Path(folder).is_dir() else []


def find_policy(app: App, ref: str) -> EvalPolicy:
    """A policy by file path, or by name among the cluster's policies."""
    if Path(ref).is_file():
        return load_policy(ref)
    for policy in policies(app):
        if policy.name == ref:
            return policy
    raise UserError(f"no eval policy {ref!r} (not a file, nor a policy name in the cluster's policies_dir)")


def matches(policy: EvalPolicy, ckpt: Checkpoint) -> bool:
    if ckpt.kind != policy.applies_to.type:
        return False
    if policy.applies_to.producer_recipe and policy.applies_to.producer_recipe != ckpt.producer_recipe:
        return False
    every = policy.cadence.every_n_steps
    return ckpt.step is None or every <= 1 or ckpt.step % every == 0


def unevaluated(
    conn: psycopg.Connection[Any], policy: EvalPolicy, eval_hash: str, ids: list[str] | None
) -> list[Checkpoint]:
    """Live checkpoints the policy applies to (only ``ids`` unless None) not yet evaluated by this recipe."""
    params = {"kind": policy.applies_to.type, "hash": eval_hash, "policy": policy.name, "ids": ids}
    return rows_as(conn, Checkpoint, QUERIES["unevaluated_checkpoints"], params)


class EvalPass(msgspec.Struct, kw_only=True):
    """One pass of a policy, counted with the keys of the original's ``evald once`` report."""

    run_ids: list[str] = []  # the eval runs submitted
    considered: int = 0
    skipped_existing: int = 0
    skipped_ineligible: int = 0

    def report(self) -> dict[str, int]:
        # never retried nor exhausted here: one eval per (checkpoint, eval recipe), never twice
        return {
            "considered": self.considered,
            "submitted": len(self.run_ids),
            "retried": 0,
            "skipped_existing": self.skipped_existing,
            "skipped_ineligible": self.skipped_ineligible,
            "skipped_exhausted": 0,
        }


def refuse_if_never_runs(app: App, policy: EvalPolicy, recipe: Recipe | None = None) -> None:
    """Refuse (InputError) a policy whose eval runs the local agent could never start: before any is
    requested, checkpoints or not, since each would wait in the queue forever."""
    if app.executor == "local":
        recipe = recipe or policy_recipe(policy)
        refuse_if_never_fits(app.config.local, recipe.resources, f"eval policy {policy.name} (recipe {recipe.name})")


def request_evals(
    app: App, policy: EvalPolicy, artifact_ids: list[str] | None = None, *, user: str | None = None
) -> EvalPass:
    """Submit the policy's eval for every matching checkpoint not yet evaluated.

    ``user``: only checkpoints of that user (the eval runs as the checkpoint's owner); None: everyone's.
    """
    recipe = policy_recipe(policy)
    refuse_if_never_runs(app, policy, recipe)
    eval_hash = recipe_hash(recipe)
    role = checkpoint_role(recipe)
    assert role is not None  # load_policy refuses a recipe without one
    done = EvalPass()
    started = done.run_ids
    candidates = [
        c for c in unevaluated(app.db.conn, policy, eval_hash, artifact_ids) if user is None or c.user == user
    ]
    if artifact_ids is None:
        row = app.db.conn.execute(
            QUERIES["checkpoints_of_kind"], {"kind": policy.applies_to.type, "user": user}
        ).fetchone()
        done.skipped_existing = (row[0] if row else 0) - len(candidates)
    done.considered = done.skipped_existing + len(candidates)
    for ckpt in candidates:
        if not matches(policy, ckpt):
            done.skipped_ineligible += 1
            continue
        key = eval_key(ckpt.id, eval_hash)
        as_user = dataclasses.replace(app, user=ckpt.user)
        from labctl.ids import new_run_id

        run_id = new_run_id()
        requested = EvalRequested(
            eval_key=key,
            policy=policy.name,
            checkpoint_artifact_id=ckpt.id,
            eval_recipe_hash=eval_hash,
            run_id=run_id,
            step=ckpt.step,
        )
        alias = artifact_alias(app.db.conn, ckpt.id, ckpt.path, ckpt.step)
        ref = InputRef(role=role, type="checkpoint", path=ckpt.path, artifact_id=ckpt.id, alias=alias, hash=ckpt.hash)
        stage = StageContext(inputs={role: ref})
        try:
            submit(
                as_user,
                recipe,
                policy.recipe,
                stage=stage,
                run_id=run_id,
                extra=[NewEvent(f"eval-{key}", requested, 0)],
            )
        except ConcurrencyError:
            continue  # another agent requested this eval first
        started.append(run_id)
    return done


def record_metrics(app: App, run_ids: list[str]) -> int:
    """For finished eval runs, record the metrics their eval_result output holds."""
    rows = app.db.conn.execute(QUERIES["unrecorded_evals"], {"run_ids": run_ids}).fetchall()
    n = 0
    for key, run_id, status in rows:
        if status not in ("succeeded", "cache_hit"):
            continue
        result = app.db.conn.execute(QUERIES["eval_result"], {"run_id": run_id}).fetchone()
        metrics = result[0] if result and isinstance(result[0], dict) else {}
        batch = [NewEvent(f"eval-{key}", EvalRecorded(eval_key=key, run_id=run_id, metrics=metrics), 1)]

        try:
            app.record(batch, f"evalrec-{key}")
            n += 1
        except ConcurrencyError:
            pass
    return n


class EvalRow(msgspec.Struct, frozen=True):
    """One eval: its policy, the training run and step of the checkpoint, the eval run's state and metrics."""

    policy: str
    producer: str | None
    step: int | None
    checkpoint: str
    eval_run: str | None
    state: str | None
    metrics: dict[str, Any] | None


def eval_rows(
    conn: psycopg.Connection[Any], *, policy: str | None = None, producer: str | None = None
) -> list[EvalRow]:
    """Evals (of ``policy``, of ``producer``'s checkpoints, each unless None), by step."""
    return rows_as(conn, EvalRow, QUERIES["eval_rows"], {"policy": policy, "producer": producer})


def recorded_policies(conn: psycopg.Connection[Any]) -> set[str]:
    """The policies evals were recorded under (including ones whose file is gone)."""
    return {p for (p,) in conn.execute(QUERIES["recorded_policies"]).fetchall()}


def metrics_cell(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "-"
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items() if k != "step")
