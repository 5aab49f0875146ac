"""Metrics logged by jobs: the helper's file format, and ingesting it exactly once into the log."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

import events
import projections
from events import EventMeta
from labctl.db import Database
from labctl.maintenance import audit
from labctl.metrics import metrics_of, summaries
from labctl.metrics_file import MetricsWriter, metrics_path
from labctl.metrics_ingest import ingest, stream_of
from tests.conftest import labctl_bin

META = EventMeta(actor="test")


def _points(conn: psycopg.Connection[Any], run_id: str) -> list[tuple[str, int, float | None]]:
    return [(s.name, st, v) for s in metrics_of(conn, [run_id]) for st, v in zip(s.steps, s.values, strict=True)]


def test_import_labctl_loads_neither_the_cli_nor_the_database_driver() -> None:
    heavy = "('psycopg', 'typer', 'msgspec', 'orjson', 'labctl.cli')"
    code = f"import sys, labctl; labctl.log; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_labctl_log_appends_json_lines_with_steps_under_the_run_dir(tmp_path: Path) -> None:
    script = (
        "import labctl\n"
        "labctl.log(step=1, loss=0.5, acc=1)\n"
        "labctl.log(loss=float('nan'), acc=float('inf'))\n"  # step 2: the previous + 1
    )
    env = {**os.environ, "LABCTL_RUN_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    lines = [json.loads(line) for line in metrics_path(tmp_path).read_text().splitlines()]
    assert [(r["step"], r["loss"], r["acc"]) for r in lines] == [(1, 0.5, 1.0), (2, "nan", "inf")]
    assert all(isinstance(r["_time"], float) for r in lines)


def test_labctl_log_outside_a_run_warns_once_and_keeps_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LABCTL_RUN_DIR"}
    script = "import labctl\nprint(labctl.log(step=1, loss=1.0), labctl.log(step=2, loss=0.5))"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None None"
    assert out.stderr.count("LABCTL_RUN_DIR is unset") == 1


def test_labctl_log_refuses_a_value_that_is_not_a_number(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="'loss'"):
        MetricsWriter(metrics_path(tmp_path)).log(1, loss="low")
    assert not metrics_path(tmp_path).exists()


def test_log_metric_command_appends_a_line_and_refuses_bad_input_with_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "LABCTL_RUN_DIR": str(tmp_path)}
    ok = subprocess.run(
        [*labctl_bin(), "log-metric", "--step", "3", "loss=0.25"], env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    again = subprocess.run([*labctl_bin(), "log-metric", "loss=0.125"], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    lines = [json.loads(line) for line in metrics_path(tmp_path).read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in lines] == [(3, 0.25), (4, 0.125)]
    for bad in (["loss=low"], ["loss"], ["--step", "x", "loss=1"], []):
        proc = subprocess.run([*labctl_bin(), "log-metric", *bad], env=env, capture_output=True, text=True)
        assert proc.returncode == 2, bad
        assert proc.stderr.startswith("labctl: error:") and "Traceback" not in proc.stderr
    assert len(metrics_path(tmp_path).read_text().splitlines()) == 2


def test_ingest_reads_complete_lines_while_live_and_the_rest_at_the_end(db_url: str, tmp_path: Path) -> None:
    path = metrics_path(tmp_path)
    writer = MetricsWriter(path)
    writer.log(1, loss=1.0, acc=0.5)
    writer.log(2, loss=0.5, acc=0.75)
    with open(path, "ab") as f:
        f.write(b'{"step": 3, "loss": 0.25')  # the job is half-way through writing a line
    with Database(db_url) as db:
        assert ingest(db.run, "run_a", tmp_path, META) == 2
        assert ingest(db.run, "run_a", tmp_path, META) == 0  # nothing new: nothing appended
        with open(path, "ab") as f:
            f.write(b"}\nnot json\n")
        writer.log(4, loss=float("nan"))
        assert ingest(db.run, "run_a", tmp_path, META) == 2
        with open(path, "ab") as f:
            f.write(b'{"step": 5, "loss": 0.125}')  # no newline: counts only once the run has ended
        assert ingest(db.run, "run_a", tmp_path, META) == 0
        assert ingest(db.run, "run_a", tmp_path, META, final=True) == 1
        conn = db.conn
        loss = [(st, v) for name, st, v in _points(conn, "run_a") if name == "loss"]
        assert loss[:3] == [(1, 1.0), (2, 0.5), (3, 0.25)] and loss[3][0] == 4 and loss[3][1] is None
        assert loss[4] == (5, 0.125)
        logged = events.read_stream(conn, stream_of("run_a"))
        assert [(e.data.offset, e.data.end) for e in logged] == [  # type: ignore[union-attr]
            (0, logged[1].data.offset),  # type: ignore[union-attr]
            (logged[1].data.offset, logged[2].data.offset),  # type: ignore[union-attr]
            (logged[2].data.offset, path.stat().st_size),  # type: ignore[union-attr]
        ]
        assert sum(e.data.skipped for e in logged) == 1  # type: ignore[union-attr]
        best = summaries(conn, ["run_a"])["run_a"]
        assert (best["loss"].best, best["loss"].best_step, best["acc"].best, best["acc"].last) == (0.125, 5, 0.75, 0.75)
        report = audit(conn)
        assert report.clean, report.differences


def test_ingest_resumes_after_a_restart_and_two_racing_ingesters_record_each_line_once(
    db_url: str, tmp_path: Path
) -> None:
    writer = MetricsWriter(metrics_path(tmp_path))
    for step in range(5000):
        writer.log(step, loss=1.0 / (step + 1))
    with Database(db_url) as first:
        first.run(lambda c: None)
        ingest(first.run, "run_b", tmp_path, META)
    for step in range(5000, 20000):
        writer.log(step, loss=1.0 / (step + 1), acc=step / 20000)
    counts: list[int] = []

    def ingester() -> None:
        with Database(db_url) as db:  # a restarted agent: nothing in memory, only the log
            counts.append(ingest(db.run, "run_b", tmp_path, META, final=True))

    threads = [threading.Thread(target=ingester) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with Database(db_url) as db:
        conn = db.conn
        logged = [e.data for e in events.read_stream(conn, stream_of("run_b"))]
        assert sum(len(e.points) for e in logged) == 20000  # type: ignore[union-attr]
        steps = [p.step for e in logged for p in e.points]  # type: ignore[union-attr]
        assert steps == list(range(20000))
        assert conn.execute("SELECT count(*) FROM metrics WHERE run_id = 'run_b'").fetchone() == (35000,)
        assert math.isclose(summaries(conn, ["run_b"])["run_b"]["loss"].last or 0, 1 / 20000)
        projections.replay_live(conn)
        assert conn.execute("SELECT count(*) FROM metrics WHERE run_id = 'run_b'").fetchone() == (35000,)
        assert audit(conn).clean
