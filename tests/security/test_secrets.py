"""Issue 13 item 8: secret values never reach the log, the API, a readable file or a job's inherited environment."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import psycopg
import pytest

from labctl.db import describe_url
from labctl.layout import find_job_log
from tests.conftest import run_cli

RECIPE = """
name = "needs-a-key"
command = 'echo "key=$WANDB_API_KEY"; env'
"""


def test_a_secret_set_on_the_command_line_reaches_the_job_and_nothing_else(
    env: dict[str, str], conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    # labctl's own database password must not travel to the job either
    env = {**env, "LABCTL_DATABASE_URL": env["LABCTL_DATABASE_URL"] + " password=hunter2"}

    proc = run_cli(env, "run", str(recipe), "--set", "env.WANDB_API_KEY=sekrit-123", "--wait", check=True)
    run_id = proc.stdout.split("run_id: ")[1].split()[0]
    run_dir = Path(proc.stdout.split("run_dir: ")[1].split()[0])

    log_file = find_job_log(run_dir)
    assert log_file is not None and log_file.name == f"needs-a-key_local-{run_id}.log"
    log = log_file.read_text()
    assert "key=sekrit-123" in log  # the job got its key
    assert "hunter2" not in log and "LABCTL_DATABASE_URL" not in log
    assert "sekrit-123" not in run_cli(env, "events", "--json", check=True).stdout
    shown = run_cli(env, "show", run_id, check=True).stdout
    assert "sekrit-123" not in shown and "${WANDB_API_KEY}" in shown  # the reference is recorded
    for path in run_dir.rglob("*"):  # the job printed it to its own log; no file of labctl's holds it
        if path.is_file() and path != log_file and "sekrit-123" in path.read_text(errors="replace"):
            assert path.name == "secrets.env" and stat.S_IMODE(path.stat().st_mode) == 0o600, path
    raw = conn.execute("SELECT count(*) FROM events WHERE data::text LIKE '%sekrit%'").fetchone()
    assert raw is not None and raw[0] == 0


def test_a_pipeline_stage_with_a_secret_value_is_refused_with_the_reference_to_write(
    env: dict[str, str], conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    (tmp_path / "stage.toml").write_text('name = "s"\ncommand = "true"\n[env]\nHF_TOKEN = "hf_abcdef"\n')
    (tmp_path / "p.toml").write_text('name = "p"\n[stages.one]\nrecipe = "stage.toml"\n')
    proc = run_cli(env, "run-pipeline", str(tmp_path / "p.toml"))
    assert proc.returncode == 2, proc.stderr
    assert "env.HF_TOKEN" in proc.stderr and "${HF_TOKEN}" in proc.stderr and "hf_abcdef" not in proc.stderr
    row = conn.execute("SELECT count(*) FROM events").fetchone()
    assert row is not None and row[0] == 0


def test_init_with_a_database_password_writes_a_config_only_its_owner_can_read(
    labctl_env: dict[str, str], tmp_path: Path
) -> None:
    url = labctl_env["LABCTL_DATABASE_URL"] + " password=hunter2"
    run_cli(labctl_env, "init", "--yes", "--scheduler", "local", "--database-url", url, check=True)
    written = Path(labctl_env["XDG_CONFIG_HOME"]) / "labctl" / "cluster.toml"
    assert "hunter2" in written.read_text()
    assert stat.S_IMODE(written.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://alice:hunter2@db.example/labctl",
        "postgresql://alice:hun@ter2@db.example/labctl",
        "postgresql://db.example/labctl?user=alice&password=hunter2&sslmode=require",
        "postgresql://db.example/labctl?PASSWORD=hunter2",
        "host=db.example user=alice password=hunter2 dbname=labctl",
        "host=db.example password = 'hunter2 x' dbname=labctl",
    ],
)
def test_every_url_form_is_shown_without_its_password(url: str) -> None:
    shown = describe_url(url)
    assert "hunter2" not in shown and "***" in shown
    assert "db.example" in shown
