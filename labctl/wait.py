"""Waiting for runs to end, showing their state changes, while some agent is alive to run them."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

import events
from labctl.agents import live_agents
from labctl.app import App
from labctl.runs import QUERIES, pipeline_state
from projections.runs import TERMINAL_STATES

OnChange = Callable[[str, str, dict[str, Any]], None]


class Watch:
    """Remembers each run's last state and reports changes.

    With ``pipeline_id`` the watch is over only once the pipeline's outcome is
    recorded too (the advancer closes it just after its last run ends).
    """

    def __init__(
        self, app: App, run_ids: Sequence[str], on_change: OnChange, *, pipeline_id: str | None = None
    ) -> None:
        self.app = app
        self.run_ids = list(run_ids)
        self.on_change = on_change
        self.pipeline_id = pipeline_id
        self.last: dict[str, str] = {}

    def check(self) -> bool:
        """Report changes; True when every run has ended (and the pipeline is closed)."""
        ids = self.run_ids
        rows = self.app.db.conn.execute(QUERIES["run_changes"], {"ids": ids}).fetchall()
        for run_id, status, exit_code, reason, producer in rows:
            if self.last.get(run_id) != status:
                self.last[run_id] = status
                self.on_change(run_id, status, {"exit_code": exit_code, "reason": reason, "producer": producer})
        if len(rows) < len(ids) or any(s not in TERMINAL_STATES for s in self.last.values()):
            return False
        if self.pipeline_id is None:
            return True
        row = pipeline_state(self.app.db.conn, self.pipeline_id)
        return row is None or row[0] != "running"


def agent_for(app: App) -> bool:
    """Whether an agent that runs this user's runs is alive (another user's agent never does)."""
    return bool(
        live_agents(
            app.db.conn,
            app.settings.agent_stale_seconds,
            serving=app.user,
            service_user=app.config.dispatch.service_user,
        )
    )


def wait(app: App, watch: Watch, *, check_agents_every: float = 2.0) -> dict[str, str] | None:
    """Block until every watched run has ended; returns their final states, or None as soon as
    no agent is alive to run them (the caller decides whether to run one).

    Watches with LISTEN (re-opened if the connection drops: a lost wake-up only
    delays the next check).
    """
    listener: psycopg.Connection[Any] | None = None
    next_agent_check = 0.0
    try:
        while True:
            try:
                if watch.check():
                    return watch.last
                now = time.monotonic()
                if now >= next_agent_check:
                    if not agent_for(app):
                        return None
                    next_agent_check = now + check_agents_every
                if listener is None or listener.closed or listener.broken:
                    listener = app.db.connect()
                    listener.execute(f"LISTEN {events.CHANNEL}")
                for _ in listener.notifies(timeout=0.5, stop_after=1):
                    pass
            except psycopg.OperationalError:
                app.db.close()
                if listener is not None:
                    listener.close()
                listener = None
                time.sleep(0.2)
    finally:
        if listener is not None and not listener.closed:
            listener.close()
