"""Long scans report progress on a terminal and stay silent otherwise."""

from __future__ import annotations

import io
import os
import pty
import subprocess
from typing import Any

import psycopg

import events
import projections
import projections.engine
from events.codec import Event
from labctl.progress import ProgressBar
from tests.conftest import labctl_bin


class Counted(Event, frozen=True, kw_only=True):
    n: int


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_count_rate_and_eta_on_a_terminal() -> None:
    out = _Terminal()
    with ProgressBar("replaying", 1000, out, interval=0) as bar:
        bar(250)
        bar(1000)
    text = out.getvalue()
    assert "replaying [" in text and " 25% 250/1,000" in text and "/s  ETA " in text
    assert "100% 1,000/1,000" in text and text.endswith("\n")


def test_replay_reports_each_table_the_server_fills_and_the_audit_each_it_compares(
    conn: psycopg.Connection[Any],
) -> None:
    events.append(conn, "s-b", [Counted(n=i) for i in range(10)], expected_version=0)
    every = len(projections.engine.all_tables())
    for run in (
        lambda told: projections.replay_live(conn, tables=lambda done, total: told.append((done, total))),
        lambda told: projections.diff_live(conn, tables=lambda done, total: told.append((done, total))),
    ):
        told: list[tuple[int, int]] = []
        run(told)
        assert told == [(n, every) for n in range(1, every + 1)]


def test_progress_bar_is_silent_when_not_a_terminal() -> None:
    out = io.StringIO()
    with ProgressBar("replaying", 1000, out, interval=0) as bar:
        bar(500)
    assert out.getvalue() == ""


def test_replay_and_audit_verify_draw_a_bar_on_a_terminal_only(
    conn: psycopg.Connection[Any], labctl_env: dict[str, str]
) -> None:
    events.append(conn, "s-a", [Counted(n=i) for i in range(300)], expected_version=0)
    for command in (["replay"], ["audit", "verify", "--full"]):
        plain = subprocess.run([*labctl_bin(), *command], env=labctl_env, capture_output=True, text=True, timeout=120)
        assert plain.returncode == 0 and plain.stderr == ""
        leader, follower = pty.openpty()
        proc = subprocess.run(
            [*labctl_bin(), *command], env=labctl_env, stdout=subprocess.PIPE, stderr=follower, timeout=120
        )
        os.close(follower)
        drawn = os.read(leader, 65536).decode()
        os.close(leader)
        assert proc.returncode == 0
        assert "300/300" in drawn and "ETA" in drawn, drawn
        # After the scan of the log the server fills the read models, table by table: the bar says so
        # instead of sitting full (minutes at 10M events). Every table is counted, the last as all.
        every = len(projections.engine.all_tables())
        assert f"tables {every}/{every}" in drawn, drawn
