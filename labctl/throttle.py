"""Throttle: which queued runs may start now, in submission order, within the limits.

Limits come from the cluster config's ``[throttle]`` (per user and global)
and from each sweep's ``throttle`` (points of one sweep running at once).
The original labctl's ``[dispatch.throttle]`` works on SLURM's queue instead:
``hold_or_release`` decides which of a user's jobs of one name to hold or
release so that at most ``max_concurrent`` run or wait eligible.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg

from events.queries import load_queries
from labctl.files import Throttle

if TYPE_CHECKING:
    from labctl.executors.slurm import QueueRow

QUERIES = load_queries("labctl", "queries.sql")


class Scope(msgspec.Struct, frozen=True):
    """Runs a claimer may take: these runs, or the runs of this pipeline or sweep (an agent started by ``--wait``)."""

    run_ids: frozenset[str] = frozenset()
    pipeline_id: str | None = None
    sweep_id: str | None = None


def claimable_runs(
    conn: psycopg.Connection[Any],
    limits: Throttle,
    limit: int,
    scope: Scope | None = None,
    executor: str = "local",
    sweep_throttle: bool = True,
    user: str | None = None,
) -> list[tuple[str, int]]:
    """``(run id, stream version)`` of queued runs that may start now, oldest first.

    ``scope``: only those runs (None: any); ``user``: only that user's runs (an agent acts for its own
    user); None: everyone's (the service).
    """
    queued = conn.execute(
        QUERIES["queued_runs"],
        {
            "executor": executor,
            "window": max(limit * 20, 200),
            "user": user,
            "scoped": scope is not None,
            "scope_runs": sorted(scope.run_ids) if scope else [],
            "scope_pipeline": scope.pipeline_id if scope else None,
            "scope_sweep": scope.sweep_id if scope else None,
        },
    ).fetchall()
    if not queued:
        return []
    active = conn.execute(QUERIES["active_runs"]).fetchall()
    per_user = Counter(u for u, _ in active)
    per_sweep = Counter(s for _, s in active if s)
    total = len(active)
    sweep_ids = list({s for *_, s in queued if s})
    sweep_limits = dict(
        conn.execute(QUERIES["sweep_throttles"], {"sweep_ids": sweep_ids}).fetchall() if sweep_ids else []
    )
    chosen: list[tuple[str, int]] = []
    for run_id, version, user, sweep_id in queued:
        if len(chosen) >= limit:
            break
        if limits.max_running is not None and total >= limits.max_running:
            break
        if limits.max_running_per_user is not None and per_user[user] >= limits.max_running_per_user:
            continue
        cap = sweep_limits.get(sweep_id) if sweep_id and sweep_throttle else None
        if cap is not None and per_sweep[sweep_id] >= cap:
            continue
        chosen.append((run_id, version))
        total += 1
        per_user[user] += 1
        if sweep_id:
            per_sweep[sweep_id] += 1
    return chosen


HELD_BY_USER = "JobHeldUser"


def hold_or_release(jobs: Sequence[QueueRow], max_concurrent: int) -> tuple[list[str], list[str]]:
    """``(to hold, to release)`` among one name's jobs, as the original labctl decides.

    Running plus eligible pending jobs above the cap: hold the excess pending
    ones, in squeue's order. Below the cap: release held ones into the free
    slots.
    """
    running = [j for j in jobs if j.state == "RUNNING"]
    eligible = [j for j in jobs if j.state == "PENDING" and j.reason != HELD_BY_USER]
    held = [j for j in jobs if j.state == "PENDING" and j.reason == HELD_BY_USER]
    used = len(running) + len(eligible)
    if used > max_concurrent:
        return [j.job_id for j in eligible[: used - max_concurrent]], []
    return [], [j.job_id for j in held[: max_concurrent - used]]
