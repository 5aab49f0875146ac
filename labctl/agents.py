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
from events.queries import rows_as
from events.types import JobSubmitted
from labctl.app import App
from labctl.errors import InputError
from labctl.executors.local import HOST
from labctl.throttle import QUERIES, Scope


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
    params = {"stale": stale_after, "user": serving, "service": service_user, "include_scoped": include_scoped}
    rows = conn.execute(QUERIES["agents_alive"], params).fetchall()
    return [r[0] for r in rows]


def register(conn: psycopg.Connection[Any], agent_id: str, user: str, slots: int, scope: Scope | None) -> None:
    scope_json = msgspec.json.encode(scope).decode() if scope else None
    conn.execute(
        QUERIES["register_agent"],
        {"id": agent_id, "host": HOST, "pid": os.getpid(), "user": user, "slots": slots, "scope": scope_json},
    )


def beat(conn: psycopg.Connection[Any], agent_id: str) -> None:
    conn.execute(QUERIES["heartbeat"], {"id": agent_id})


def mark_stopped(conn: psycopg.Connection[Any], agent_id: str) -> None:
    conn.execute(QUERIES["mark_agent_stopped"], {"id": agent_id})


class StaleRun(msgspec.Struct, frozen=True):
    """A local run held by an agent that stopped or went stale."""

    run_id: str
    job_id: str | None
    agent_id: str
    user: str


def runs_of_stale_agents(conn: psycopg.Connection[Any], agent_id: str, stale_after: float) -> list[StaleRun]:
    """Local runs held by agents (other than ``agent_id``) that stopped or whose heartbeat went stale."""
    return rows_as(conn, StaleRun, QUERIES["runs_of_stale_agents"], {"id": agent_id, "stale": stale_after})


def mark_stale_stopped(conn: psycopg.Connection[Any], agent_id: str, stale_after: float) -> None:
    """Agents (other than ``agent_id``) whose heartbeat went stale are recorded as stopped."""
    conn.execute(QUERIES["stop_stale_agents"], {"id": agent_id, "stale": stale_after})


def process_start_of(conn: psycopg.Connection[Any], run_id: str) -> int | None:
    """The start time recorded with the run's local job pid (None for jobs recorded without one)."""
    found = None
    for e in events.read_stream(conn, f"run-{run_id}"):
        if isinstance(e.data, JobSubmitted):
            found = e.data.process_start
    return found
