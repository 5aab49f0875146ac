"""Acceptance: the log commands through the real `labctl` CLI in a subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

import projections
from events import NewEvent
from events.types import RunFinished, RunSubmitted
from labctl import embedded
from tests.conftest import labctl_bin, run_cli


def _seed(conn: psycopg.Connection[Any], run_id: str = "run_abc123") -> None:
    submitted = RunSubmitted(
        run_id=run_id, name="train", user="alice", executor="local", run_dir="/r", recipe={"name": "train"}
    )
    projections.record(conn, [NewEvent(f"run-{run_id}", submitted, 0)])
    projections.record(conn, [NewEvent(f"run-{run_id}", RunFinished(run_id=run_id, state="failed", exit_code=3))])


def test_events_json_prints_one_object_per_line_with_the_documented_fields(
    conn: psycopg.Connection[Any], labctl_env: dict[str, str]
) -> None:
    _seed(conn)
    out = run_cli(labctl_env, "events", "--json", check=True).stdout.splitlines()
    rows = [json.loads(line) for line in out]
    assert [r["type"] for r in rows] == ["RunSubmitted", "RunFinished"]
    assert {"position", "stream", "version", "type", "data", "meta", "recorded_at"} <= rows[0].keys()
    assert rows[1]["data"]["exit_code"] == 3
    after = run_cli(labctl_env, "events", "--json", "--after", str(rows[0]["position"]), check=True)
    assert [json.loads(x)["type"] for x in after.stdout.splitlines()] == ["RunFinished"]
    typed = run_cli(labctl_env, "events", "--type", "RunFinished", check=True)
    assert "RunFinished" in typed.stdout and "RunSubmitted" not in typed.stdout


def test_events_follow_prints_events_appended_later(conn: psycopg.Connection[Any], labctl_env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [*labctl_bin(), "events", "--follow", "--json"], env=labctl_env, stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(0.5)  # let it reach its LISTEN; a miss is caught by polling anyway
        _seed(conn)
        lines = [proc.stdout.readline() for _ in range(2)]  # type: ignore[union-attr]
        assert [json.loads(x)["type"] for x in lines] == ["RunSubmitted", "RunFinished"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_history_shows_a_runs_timeline_by_id_prefix(conn: psycopg.Connection[Any], labctl_env: dict[str, str]) -> None:
    _seed(conn)
    out = run_cli(labctl_env, "history", "run_abc", check=True).stdout
    assert "run-run_abc123" in out and "RunSubmitted" in out and "exit_code=3" in out


def test_history_of_an_unknown_id_is_one_line_and_exit_1(labctl_env: dict[str, str]) -> None:
    proc = run_cli(labctl_env, "history", "run_nope")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["labctl: error: no run, artifact, pipeline or stream named 'run_nope'"]


def test_audit_verify_passes_then_names_the_altered_position(
    conn: psycopg.Connection[Any], labctl_env: dict[str, str]
) -> None:
    _seed(conn)
    ok = run_cli(labctl_env, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    pos = conn.execute("SELECT min(position) FROM events").fetchone()[0]  # type: ignore[index]
    with conn.transaction():
        conn.execute("ALTER TABLE events DISABLE TRIGGER events_are_immutable")
        conn.execute(
            "UPDATE events SET data = jsonb_set(data::jsonb, '{user}', '\"mallory\"')::json WHERE position = %s", (pos,)
        )
        conn.execute("ALTER TABLE events ENABLE TRIGGER events_are_immutable")
    incremental = run_cli(labctl_env, "audit", "verify")
    assert incremental.returncode == 0  # trusts what it verified before: the change is behind its checkpoint
    bad = run_cli(labctl_env, "audit", "verify", "--full")
    assert bad.returncode == 1
    assert f"hash chain broken at position {pos}" in bad.stdout
    assert "Traceback" not in bad.stderr


def test_audit_verify_names_a_differing_projection_row(
    conn: psycopg.Connection[Any], labctl_env: dict[str, str]
) -> None:
    _seed(conn)
    conn.execute("UPDATE live.runs SET exit_code = 0 WHERE id = 'run_abc123'")
    bad = run_cli(labctl_env, "audit", "verify", "--full")
    assert bad.returncode == 1
    assert "runs ['run_abc123']: differs (exit_code: live=0 log=3)" in bad.stdout


def test_replay_rebuilds_and_until_builds_a_read_only_past(
    conn: psycopg.Connection[Any], labctl_env: dict[str, str]
) -> None:
    _seed(conn)
    conn.execute("UPDATE live.runs SET status = 'bogus'")
    out = run_cli(labctl_env, "replay", check=True).stdout
    assert "rebuilt 2 events" in out
    assert conn.execute("SELECT status FROM live.runs").fetchone() == ("failed",)
    first = conn.execute("SELECT min(position) FROM events").fetchone()[0]  # type: ignore[index]
    past = run_cli(labctl_env, "replay", "--until", str(first), check=True).stdout
    assert f"asof_{first}" in past
    assert conn.execute(f"SELECT status FROM asof_{first}.runs").fetchone() == ("submitted",)


def test_doctor_reports_versions_counts_and_checkpoints(
    conn: psycopg.Connection[Any], labctl_env: dict[str, str]
) -> None:
    _seed(conn)
    out = run_cli(labctl_env, "doctor", check=True).stdout
    assert "schema version" in out
    assert re.search(r"^events +2 \(last position \d+\)$", out, re.MULTILINE)
    assert "projection runs" in out and "lag 0" in out


def test_dead_database_is_one_readable_line_and_nonzero_exit(tmp_path: Path, labctl_env: dict[str, str]) -> None:
    env = dict(labctl_env, LABCTL_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", LABCTL_DB_RETRY_SECONDS="1")
    proc = run_cli(env, "events")
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("labctl: error: cannot reach the database at postgresql://")


def test_embedded_postgres_starts_once_and_is_reused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LABCTL_DATABASE_URL"}
    env.update(LABCTL_HOME=str(tmp_path / "h"), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    try:
        first = run_cli(env, "db", "upgrade", check=True).stdout
        assert "created schema version" in first
        pid = (tmp_path / "h" / "pg" / "postmaster.pid").read_text().split()[0]
        again = run_cli(env, "db", "upgrade", check=True).stdout
        assert "schema is current" in again
        assert (tmp_path / "h" / "pg" / "postmaster.pid").read_text().split()[0] == pid
        assert "schema version" in run_cli(env, "doctor", check=True).stdout
    finally:
        run_cli(env, "db", "stop")


def test_a_home_deleted_under_its_running_server_gets_a_new_server_the_old_one_cannot_disturb() -> None:
    """``rm -rf ~/.labctl`` while its Postgres runs, then any command: the orphaned server is stopped first.

    Left running, it would notice within a minute that its lock file is gone and, shutting down,
    remove the socket files at its path: the new server's.
    """
    base = Path(tempfile.mkdtemp(prefix="labctl-orphan-"))
    base.chmod(0o755)  # reachable by the service account, so the data lives in the home itself
    home = base / "h"
    env = {k: v for k, v in os.environ.items() if k != "LABCTL_DATABASE_URL"}
    env.update(LABCTL_HOME=str(home), XDG_CONFIG_HOME=str(base / "xdg"))
    try:
        run_cli(env, "db", "upgrade", check=True)
        pgdata = embedded.data_dir(home)
        old = int((pgdata / "postmaster.pid").read_text().split()[0])
        shutil.rmtree(pgdata)
        shutil.rmtree(home, ignore_errors=True)
        assert embedded.orphans(pgdata) == [old]

        assert "created schema version" in run_cli(env, "db", "upgrade", check=True).stdout
        new = int((embedded.data_dir(home) / "postmaster.pid").read_text().split()[0])
        assert new != old
        assert embedded.orphans(pgdata) == []
        assert run_cli(env, "status", check=True).returncode == 0
    finally:
        run_cli(env, "db", "stop")
        for pid in embedded.orphans(embedded.data_dir(home)):  # this test failed: leave no server behind
            os.kill(pid, signal.SIGQUIT)
        shutil.rmtree(base, ignore_errors=True)
