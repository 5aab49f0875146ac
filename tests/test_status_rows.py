"""`labctl status`'s rows: the user's unfinished runs plus their latest 20, or everything; filters by user and
state are nullable parameters of one named query, and the JSON lines (COPY) hold the same rows as the table."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import psycopg

import projections
from events import NewEvent
from events.types import RunFinished, RunStarted, RunSubmitted
from labctl.runs import StatusRow, status_rows, write_status_json


def _run(conn: psycopg.Connection[Any], run_id: str, user: str, end: str | None) -> None:
    stream = f"run-{run_id}"
    submitted = RunSubmitted(
        run_id=run_id, name="train", user=user, executor="local", run_dir=f"/runs/{run_id}", recipe={}
    )
    projections.record(conn, [NewEvent(stream, submitted, 0)])
    if end is None:
        return
    projections.record(conn, [NewEvent(stream, RunStarted(run_id=run_id, started_at=datetime.now(UTC)))])
    code = 0 if end == "succeeded" else 1
    projections.record(conn, [NewEvent(stream, RunFinished(run_id=run_id, state=end, exit_code=code))])


def _fill(conn: psycopg.Connection[Any]) -> None:
    _run(conn, "a-open-0", "alice", None)  # the oldest runs are unfinished: shown although not in the latest 20
    _run(conn, "a-open-1", "alice", None)
    for i in range(25):
        _run(conn, f"a-{i:02}", "alice", "failed" if i % 5 == 0 else "succeeded")
    for i in range(3):
        _run(conn, f"b-{i}", "bob", None)


def _ids(rows: list[StatusRow]) -> list[str]:
    return [r.id for r in rows]


def test_default_status_is_the_users_unfinished_runs_plus_their_latest_20_oldest_first(
    conn: psycopg.Connection[Any],
) -> None:
    _fill(conn)
    rows = status_rows(conn, user="alice", state=None, everything=False)
    assert _ids(rows) == ["a-open-0", "a-open-1", *(f"a-{i:02}" for i in range(5, 25))]
    first = rows[0]
    assert (first.name, first.status, first.user, first.exit_code, first.executor) == (
        "train",
        "submitted",
        "alice",
        None,
        "local",
    )
    assert rows[-1].status == "succeeded" and rows[-1].exit_code == 0 and rows[-1].finished_at is not None


def test_state_and_user_filter_and_none_means_everyone(conn: psycopg.Connection[Any]) -> None:
    _fill(conn)
    failed = status_rows(conn, user="alice", state="failed", everything=True)
    assert _ids(failed) == ["a-00", "a-05", "a-10", "a-15", "a-20"]
    assert _ids(status_rows(conn, user="bob", state=None, everything=False)) == ["b-0", "b-1", "b-2"]
    everyone = status_rows(conn, user=None, state="submitted", everything=True)
    assert _ids(everyone) == ["a-open-0", "a-open-1", "b-0", "b-1", "b-2"]
    assert len(status_rows(conn, user=None, state=None, everything=True)) == 30
    # default view of everyone: 5 unfinished plus the latest 20, overlapping on bob's three
    assert len(status_rows(conn, user=None, state=None, everything=False)) == 22


def test_json_lines_hold_the_same_rows_as_the_table(conn: psycopg.Connection[Any]) -> None:
    _fill(conn)
    for everything in (False, True):
        out = io.BytesIO()
        n = write_status_json(conn, out, user="alice", state=None, everything=everything)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        table = status_rows(conn, user="alice", state=None, everything=everything)
        assert n == len(lines) == len(table)
        assert [(d["id"], d["status"], d["user"], d["exit_code"]) for d in lines] == [
            (r.id, r.status, r.user, r.exit_code) for r in table
        ]


def test_status_says_when_the_read_models_lag_the_log_and_replay_mends_it(
    conn: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    # An import killed before its rebuild leaves events the read models have not applied: status shows the
    # past, and says so, until `labctl replay` (or the next write) brings them up.
    from events import append_batch
    from tests.conftest import run_cli

    _run(conn, "lagging", "alice", None)
    assert "behind the log" not in run_cli(env, "status", "--all", check=True).stderr
    with conn.transaction():
        append_batch(conn, [NewEvent("run-lagging", RunFinished(run_id="lagging", state="failed", exit_code=3))])
    shown = run_cli(env, "status", "--all", check=True)
    assert "1 event behind the log" in shown.stderr and "labctl replay" in shown.stderr
    assert "submitted" in shown.stdout
    run_cli(env, "replay", check=True)
    mended = run_cli(env, "status", "--all", check=True)
    assert "behind the log" not in mended.stderr
    assert "failed" in mended.stdout
