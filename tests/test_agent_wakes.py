"""The agent sleeps between ticks with nothing to do, and wakes when one of its jobs exits (a pidfd),
not when its poll interval runs out."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import wait_for
from tests.test_agent_batches import app_for, submit

SLEEPER = """\
name = "sleeper"
command = ["bash", "-c", "sleep 1"]
"""


def test_a_job_that_exits_wakes_the_agent_before_its_poll_interval(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import events
    from labctl.agent import Agent

    recipe = tmp_path / "sleeper.toml"
    recipe.write_text(SLEEPER)
    run_id = submit(env, recipe)
    app = app_for(env, monkeypatch)
    worker = Agent(app, slots=1, poll_interval=120.0, reactors=[])  # without a wake-up it would sleep 2 minutes
    thread = threading.Thread(target=worker.run, name="agent")
    thread.start()
    try:
        wait_for(lambda: status(conn, run_id) == "running", "the job started", timeout=60)
        started = time.monotonic()
        wait_for(lambda: status(conn, run_id) == "succeeded", "the job's end recorded", timeout=60)
        # the job sleeps 1 s; its end is recorded well before the poll interval would have woken the agent
        assert time.monotonic() - started < 60
    finally:
        worker.stopping.set()
        conn.execute(f"NOTIFY {events.CHANNEL}")  # wake it to see it is stopping
        thread.join(30)
        app.close()
    assert not thread.is_alive()


def status(conn: psycopg.Connection[Any], run_id: str) -> str | None:
    row = conn.execute("SELECT status FROM runs WHERE id = %s", (run_id,)).fetchone()
    return row[0] if row else None
