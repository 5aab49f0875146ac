"""Metrics end to end: a job logs with labctl.log, a real agent ingests them live and at the end,
and `labctl metrics` / `labctl compare` show them (real Postgres, real agent processes)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import psycopg

import events
from labctl.metrics_file import MetricsWriter, metrics_path
from tests.conftest import agent, run_cli, wait_for

JOB = """
import os, pathlib, time, labctl
run_dir = pathlib.Path(os.environ["LABCTL_RUN_DIR"])
for i in range(3):
    labctl.log(step=i, loss=1 / (i + 1), accuracy=i / 4)
while not (run_dir / "go").exists():
    time.sleep(0.05)
for i in range(3, 6):
    labctl.log(step=i, loss=1 / (i + 1), accuracy=i / 4)
"""


def write_recipe(directory: Path, name: str = "metrics-job", job: str = JOB, lr: float = 0.1) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\ncommand = {json.dumps([sys.executable, "-c", job])}\n\n[params]\nlr = {lr}\n'
        f'\n[resources]\ntime = "00:02:00"\n'
    )
    return path


def submit(env: dict[str, str], recipe: Path, *args: str) -> str:
    out = run_cli(env, "run", str(recipe), *args, check=True).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("run_id:"))


def status_of(conn: psycopg.Connection[Any], run_id: str) -> str:
    row = conn.execute("SELECT status FROM runs WHERE id = %s", (run_id,)).fetchone()
    return str(row[0]) if row else "?"


def logged_points(conn: psycopg.Connection[Any], run_id: str) -> list[int]:
    """Every step recorded in the log for the run (duplicates would show twice)."""
    return [p.step for e in events.read_stream(conn, f"metrics-{run_id}") for p in e.data.points]  # type: ignore[union-attr]


def run_dir_of(conn: psycopg.Connection[Any], run_id: str) -> Path:
    row = conn.execute("SELECT run_dir FROM runs WHERE id = %s", (run_id,)).fetchone()
    assert row is not None
    return Path(row[0])


def test_a_running_jobs_metrics_appear_while_it_runs_and_all_of_them_once_at_the_end(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    run_id = submit(env, write_recipe(tmp_path))
    with agent(env, tmp_path / "agent.log"):
        wait_for(lambda: logged_points(conn, run_id) == [0, 1, 2], "the first three lines, while the job runs", 30)
        assert status_of(conn, run_id) == "running"
        shown = run_cli(env, "metrics", run_id, check=True).stdout
        assert shown.splitlines()[0].split() == ["STEP", "accuracy", "loss"]
        (run_dir_of(conn, run_id) / "go").touch()
        wait_for(lambda: status_of(conn, run_id) == "succeeded", "the run to succeed", 30)
    assert logged_points(conn, run_id) == [0, 1, 2, 3, 4, 5]
    rows = [line.split() for line in run_cli(env, "metrics", run_id, check=True).stdout.splitlines()[1:]]
    assert rows == [[str(i), f"{i / 4:.6g}", f"{1 / (i + 1):.6g}"] for i in range(6)]
    as_json = json.loads(run_cli(env, "metrics", run_id[:8], "--metric", "loss", "--json", check=True).stdout)
    assert as_json == [
        {"run_id": run_id, "name": "loss", "steps": list(range(6)), "values": [1 / (i + 1) for i in range(6)]}
    ]
    assert run_cli(env, "audit", "verify").returncode == 0


def test_metrics_ingested_by_an_agent_killed_mid_run_are_kept_and_the_rest_recorded_once_by_the_next(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    run_id = submit(env, write_recipe(tmp_path))
    fast_stale = {"LABCTL_AGENT_STALE_SECONDS": "2"}
    with agent(env, tmp_path / "a.log", **fast_stale) as first:
        wait_for(lambda: logged_points(conn, run_id) == [0, 1, 2], "the first agent to ingest three lines", 30)
        first.send_signal(signal.SIGKILL)
        first.wait()
    # Lines the job wrote after the agent died: the next agent records them when it ends the run.
    writer = MetricsWriter(metrics_path(run_dir_of(conn, run_id)))
    writer.log(3, loss=0.25)
    writer.log(4, loss=0.2)
    with agent(env, tmp_path / "b.log", **fast_stale):
        wait_for(lambda: status_of(conn, run_id) == "node_fail", "the next agent to end the orphaned run", 30)
    assert logged_points(conn, run_id) == [0, 1, 2, 3, 4]
    assert conn.execute("SELECT count(*) FROM metrics WHERE run_id = %s", (run_id,)).fetchone() == (8,)


def test_metrics_plot_draws_in_the_terminal_writes_svg_and_refuses_png_with_exit_2(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    quick = "import labctl\nfor i in range(1, 6):\n    labctl.log(step=i, val_accuracy=0.5 + i / 20, loss=1 / i)\n"
    run_id = submit(env, write_recipe(tmp_path, "quick", quick))
    with agent(env, tmp_path / "agent.log"):
        wait_for(lambda: status_of(conn, run_id) == "succeeded", "the run to succeed", 30)
    term = run_cli(env, "metrics", run_id, "--metric", "val_accuracy", "--plot", check=True).stdout
    assert "val_accuracy by step" in term and "step" in term.splitlines()[-1]
    assert "0.75" in term  # the y axis reaches the last value
    term_first = run_cli(env, "metrics", "--plot", run_id, check=True).stdout  # --plot before the run id
    assert "loss" in term_first
    out = tmp_path / "curve.svg"
    proc = run_cli(env, "metrics", run_id, "--plot", str(out), check=True)
    assert proc.stdout.strip() == f"wrote {out}"
    svg = out.read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and run_id in svg
    before = events.last_position(conn)
    png = run_cli(env, "metrics", run_id, "--plot", str(tmp_path / "curve.png"))
    assert png.returncode == 2 and "PNG is not supported" in png.stderr and "Traceback" not in png.stderr
    assert not (tmp_path / "curve.png").exists()
    unknown = run_cli(env, "metrics", "run_doesnotexist")
    assert unknown.returncode == 1 and unknown.stderr.strip() == "labctl: error: no run 'run_doesnotexist'"
    nothing = run_cli(env, "metrics", run_id, "--metric", "bleu")
    assert nothing.returncode == 1 and "no metrics named bleu" in nothing.stderr
    assert events.last_position(conn) == before


def test_compare_puts_params_inputs_and_final_and_best_metrics_side_by_side_marking_differences(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    def job(peak: float) -> str:
        return (
            "import labctl\n"
            f"for i, acc in enumerate([0.5, {peak}, 0.7]):\n"
            "    labctl.log(step=i, accuracy=acc, loss=1 - acc)\n"
        )

    a = submit(env, write_recipe(tmp_path, "cmp-a", job(0.9), lr=0.1))
    b = submit(env, write_recipe(tmp_path, "cmp-b", job(0.6), lr=0.01))
    with agent(env, tmp_path / "agent.log"):
        wait_for(lambda: {status_of(conn, a), status_of(conn, b)} == {"succeeded"}, "both runs to succeed", 30)
    out = run_cli(env, "compare", a, b, check=True).stdout
    rows = {tuple(line.split()[:3]): line for line in out.splitlines()}
    lr_row = next(line for line in out.splitlines() if " lr " in f" {line} ")
    assert lr_row.split()[:5] == ["*", "params", "lr", "0.1", "0.01"]
    final = next(line for line in out.splitlines() if "accuracy (final)" in line)
    assert not final.startswith("*") and final.split()[-2:] == ["0.7", "0.7"]
    best = next(line for line in out.splitlines() if "accuracy (best, max)" in line)
    assert best.startswith("*") and "0.9 @ step 1" in best and "0.7 @ step 2" in best
    loss_best = next(line for line in out.splitlines() if "loss (best, min)" in line)
    assert "0.1 @ step 1" in loss_best
    assert out.splitlines()[-1].endswith("differ (marked *)")
    only = run_cli(env, "compare", a, b, "--diff", check=True).stdout
    assert all(line.startswith("*") for line in only.splitlines()[1:-1])
    assert rows  # the table has rows
    data = json.loads(run_cli(env, "compare", a, b, "--json", check=True).stdout)
    assert {"section": "params", "key": "lr", "values": ["0.1", "0.01"], "differs": True} in data


def test_log_metric_from_a_shell_job_is_ingested(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    labctl_exe = str(Path(sys.executable).parent / "labctl")
    recipe = tmp_path / "shell.toml"
    script = f'for i in 1 2 3; do "{labctl_exe}" log-metric --step $i loss=0.$i || exit 9; done'
    recipe.write_text(f'name = "shell-metrics"\ncommand = {json.dumps(["bash", "-c", script])}\n')
    run_id = submit(env, recipe)
    with agent(env, tmp_path / "agent.log"):
        wait_for(lambda: status_of(conn, run_id) in ("succeeded", "failed"), "the run to end", 30)
    assert status_of(conn, run_id) == "succeeded"
    assert logged_points(conn, run_id) == [1, 2, 3]
    assert os.path.exists(metrics_path(run_dir_of(conn, run_id)))
