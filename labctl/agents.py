"""The agents table: who is alive (heartbeats), what an agent may run (its scope), who went stale.

A plain operational table, not events: a heartbeat every second would flood the log.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import msgspec
import psycopg

import events
from events.types import JobSubmitted
from labctl.app import App
from labctl.errors import InputError
from labctl.executors.local import HOST
from labctl.throttle import Scope


def check_service(app: App) -> None:
    """Only the account the cluster config names as the group's service may act for every user."""
    allowed = app.config.dispatch.service_user
    if allowed is None:
        raise InputError("--service: the cluster config names no service account ([dispatch] service_user)")
    if app.user != allowed:
        raise InputError(f"--service: only {allowed} (the cluster's [dispatch] service_user) may act for every user")


def new_agent_id() -> str:
    return f"agent_{HOST}_{os.getpid()}_{secrets.token_hex(3)}"


def live_agents(
    conn: psycopg.Connection[Any],
    stale_after: float,
    *,
    include_scoped: bool = False,
    serving: str | None = None,
    service_user: str | None = None,
) -> list[str]:
    """Agents whose heartbeat is younger than ``stale_after`` seconds (full agents only, unless
    ``include_scoped``); with ``serving``, only those that run that user's runs: the user's own, or the
    group's service account's."""
    rows = conn.execute(
        "SELECT id FROM agents WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => %(stale)s)"
        " AND (%(user)s::text IS NULL OR user_name = %(user)s OR user_name = %(service)s)"
        + ("" if include_scoped else " AND scope IS NULL"),
        {"stale": stale_after, "user": serving, "service": service_user},
    ).fetchall()
    return [r[0] for r in rows]


def register(conn: psycopg.Connection[Any], agent_id: str, user: str, slots: int, scope: Scope | None) -> None:
    conn.execute(
        "INSERT INTO agents (id, host, pid, user_name, slots, scope) VALUES (%s, %s, %s, %s, %s, %s)",
        (agent_id, HOST, os.getpid(), user, slots, msgspec.json.encode(scope).decode() if scope else None),
    )


def beat(conn: psycopg.Connection[Any], agent_id: str) -> None:
    conn.execute("UPDATE agents SET heartbeat_at = now() WHERE id = %s", (agent_id,))


def mark_stopped(conn: psycopg.Connection[Any], agent_id: str) -> None:
    conn.execute("UPDATE agents SET stopped_at = now() WHERE id = %s", (agent_id,))


def runs_of_stale_agents(
    conn: psycopg.Connection[Any], agent_id: str, stale_after: float
) -> list[tuple[str, str | None, str, str]]:
    """``(run id, job id, agent id, user)`` of local runs held by agents (other than ``agent_id``) that
    stopped or whose heartbeat went stale."""
    return conn.execute(
        "SELECT r.id, r.job_id, a.id, r.user_name FROM runs r JOIN agents a ON a.id = r.agent_id "
        "WHERE r.executor = 'local' AND r.status IN ('submitted', 'running') AND a.id <> %s "
        "AND (a.stopped_at IS NOT NULL OR a.heartbeat_at < now() - make_interval(secs => %s))",
        (agent_id, stale_after),
    ).fetchall()


def mark_stale_stopped(conn: psycopg.Connection[Any], agent_id: str, stale_after: float) -> None:
    """Agents (other than ``agent_id``) whose heartbeat went stale are recorded as stopped."""
    conn.execute(
        "UPDATE agents SET stopped_at = now() WHERE stopped_at IS NULL AND id <> %s "
        "AND heartbeat_at < now() - make_interval(secs => %s)",
        (agent_id, stale_after),
    )


def process_start_of(conn: psycopg.Connection[Any], run_id: str) -> int | None:
    """The start time recorded with the run's local job pid (None for jobs recorded without one)."""
    found = None
    for e in events.read_stream(conn, f"run-{run_id}"):
        if isinstance(e.data, JobSubmitted):
            found = e.data.process_start
    return found
