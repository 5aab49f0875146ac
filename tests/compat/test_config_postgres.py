"""The original's ``[postgres]`` table is where the database is: socket dir or TCP host, port, database,
user defaulting to $USER, password from ``password_env``, ~/.pgpass or PG* (issue 9)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from labctl.db import postgres_url
from labctl.files import Postgres
from tests.conftest import run_cli

RECIPE = 'name = "hello"\ncommand = ["bash", "-c", "echo hi"]\n'


def _postgres_cluster(tmp_path: Path, db_url: str, **override: Any) -> tuple[Path, dict[str, Any]]:
    """A cluster.toml whose only way to the test's database is a [postgres] table."""
    params = conninfo_to_dict(db_url)
    table = {"host": params["host"], "port": int(params.get("port") or 5432), "database": params["dbname"]}
    table.update(override)
    lines = [f"{k} = {json.dumps(v)}" for k, v in table.items() if v is not None]
    path = tmp_path / "cluster.toml"
    path.write_text(
        f'name = "lab"\n[filesystem]\nruns_base = "{tmp_path}/runs"\n[scheduler]\nkind = "local"\n'
        "[postgres]\n" + "\n".join(lines) + "\n"
    )
    return path, params


def _without_database_url(labctl_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in labctl_env.items() if not k.startswith("PG")}
    env.pop("LABCTL_DATABASE_URL")
    env["LABCTL_HOME"] = str(tmp_path / "no-embedded-here")
    return env


def test_postgres_socket_dir_and_user_from_user_env_reach_the_database(
    labctl_env: dict[str, str], tmp_path: Path, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    cluster, params = _postgres_cluster(tmp_path, db_url, user=None)
    assert params["host"].startswith("/")  # the embedded server listens on a Unix socket, as the original's
    env = {**_without_database_url(labctl_env, tmp_path), "USER": params["user"]}
    (tmp_path / "hello.toml").write_text(RECIPE)

    url = run_cli(env, "--cluster", str(cluster), "db", "url", check=True).stdout.strip()
    run_id = run_cli(env, "--cluster", str(cluster), "run", str(tmp_path / "hello.toml"), "--wait", check=True)

    assert conninfo_to_dict(url)["user"] == params["user"] and conninfo_to_dict(url)["dbname"] == params["dbname"]
    recorded = conn.execute("SELECT count(*) FROM runs WHERE status = 'succeeded'").fetchone()
    assert recorded == (1,), run_id.stdout  # the run went into the [postgres] database, nowhere else
    assert not (tmp_path / "no-embedded-here" / "pg").exists()


def test_postgres_password_env_is_handed_to_libpq_and_never_put_in_the_url(
    labctl_env: dict[str, str], tmp_path: Path, db_url: str
) -> None:
    cluster, _ = _postgres_cluster(tmp_path, db_url, user=params_user(db_url), password_env="LAB_PG_SECRET")
    env = {**_without_database_url(labctl_env, tmp_path), "LAB_PG_SECRET": "s3cret"}

    proc = run_cli(env, "--cluster", str(cluster), "db", "url", check=True)
    missing = run_cli({k: v for k, v in env.items() if k != "LAB_PG_SECRET"}, "--cluster", str(cluster), "db", "url")

    assert "s3cret" not in proc.stdout
    assert missing.returncode == 1
    assert missing.stderr == "labctl: error: [postgres] password_env = 'LAB_PG_SECRET', but that variable is not set\n"


def params_user(db_url: str) -> str:
    return str(conninfo_to_dict(db_url)["user"])


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (Postgres(host="/run/pg", user="alice"), {"host": "/run/pg", "port": "5432", "dbname": "labctl"}),
        (Postgres(host="db.lab.org", port=6543, database="reg", user="bob"), {"host": "db.lab.org", "port": "6543"}),
        (Postgres(host="::1", user="carol"), {"host": "::1", "port": "5432"}),
    ],
)
def test_postgres_table_becomes_a_url_libpq_reads_back(table: Postgres, expected: dict[str, str]) -> None:
    params = conninfo_to_dict(postgres_url(table))

    assert {k: params[k] for k in expected} == expected
    assert params["user"] == table.user
    assert "password" not in params


def test_database_url_wins_over_postgres_table(labctl_env: dict[str, str], tmp_path: Path, db_url: str) -> None:
    cluster, _ = _postgres_cluster(tmp_path, db_url, host="/nonexistent/socket/dir")

    proc = run_cli(labctl_env, "--cluster", str(cluster), "db", "url", check=True)

    assert proc.stdout.strip() == labctl_env["LABCTL_DATABASE_URL"]
