"""The main job (examples/run-main-job.sh) end to end: per-epoch metrics logged through labctl.log,
a comparison and a terminal plot of validation accuracy at the end, and the views over its sweep."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import REPO, run_cli


def test_the_main_job_logs_epoch_metrics_and_ends_with_a_comparison_and_a_plot_of_the_sweep(
    conn: psycopg.Connection[Any], labctl_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**labctl_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{labctl_env['PATH']}"}
    proc = subprocess.run(
        ["bash", str(REPO / "examples" / "run-main-job.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    compare = out.split("== the sweep's points side by side")[1].split("== validation accuracy by epoch")[0]
    assert re.search(r"^\*\s+params\s+args\.lr_index\s+0\s+1\s+2\s+3\s*$", compare, re.M), compare
    assert re.search(r"^\*\s+metrics\s+val_accuracy \(best, max\)", compare, re.M), compare
    plot = out.split("== validation accuracy by epoch")[1]
    assert "val_accuracy by step" in plot
    assert all(f"lr_index={i}" in plot for i in range(4)), plot

    train_runs = [
        r[0] for r in conn.execute("SELECT id FROM runs WHERE name = 'ml-train' ORDER BY sweep_index").fetchall()
    ]
    assert len(train_runs) == 4
    epochs = conn.execute(
        "SELECT run_id, array_agg(step ORDER BY step) FROM metrics WHERE name = 'val_accuracy' GROUP BY run_id"
    ).fetchall()
    assert dict(epochs) == {r: [1, 2, 3, 4, 5] for r in train_runs}

    cli_env = {**env, "LABCTL_CLUSTER": str(Path(env["LABCTL_HOME"]) / "examples-cluster.toml")}
    sweep_id = conn.execute("SELECT sweep_id FROM runs WHERE id = %s", (train_runs[0],)).fetchone()[0]  # type: ignore[index]
    shown = run_cli(cli_env, "sweep", "show", sweep_id, "--metric", "val_accuracy", check=True).stdout.splitlines()
    assert shown[1].split()[:4] == ["LR_INDEX", "RUN", "STATUS", "EXIT"] and "val_accuracy (final)" in shown[1]
    assert [line.split()[:3] for line in shown[2:6]] == [[str(i), r, "succeeded"] for i, r in enumerate(train_runs)]
    assert all(re.search(r"0\.\d+ @ \d", line) for line in shown[2:6]), shown

    listed = run_cli(cli_env, "eval", "ls", check=True).stdout.splitlines()
    assert listed[0].split() == [
        "POLICY", "TRAIN", "RUN", "LR_INDEX", "STEP", "examples", "lr", "accuracy", "loss", "EVAL", "RUN", "STATE"
    ]  # fmt: skip
    order = [(line.split()[2], int(line.split()[3])) for line in listed[1:]]
    assert order == sorted(order) and len(order) == 20  # by the swept index, then by epoch

    status = run_cli(
        cli_env, "status", "--all", "--columns", "args.lr_index,metrics.val_accuracy,duration", check=True
    ).stdout.splitlines()
    assert status[0].split()[-3:] == ["args.lr_index", "val_accuracy", "DURATION"]
    train_lines = [line for line in status if " ml-train " in line]
    assert len(train_lines) == 4 and all(re.search(r" [0-3]\s+0\.\d+\s+\d+:\d\d$", line) for line in train_lines)
    bad = run_cli(cli_env, "status", "--columns", "colour")
    assert bad.returncode == 2 and "expected a comma-separated list of params" in bad.stderr
    assert run_cli(cli_env, "audit", "verify").returncode == 0
