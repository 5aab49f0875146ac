"""Bringing an original (Rust) labctl registry into the event log: `labctl import`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from labctl.db import connect, ensure_schema
from tests.conftest import _with_dbname, run_cli
from tests.original.ddl import VERSIONS


@pytest.fixture
def original_url(server_url: str) -> Iterator[str]:
    """A database holding an original registry (newest schema) in public, and nothing of ours."""
    name = f"labctl_o_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = _with_dbname(server_url, name)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(VERSIONS["0003"].encode())
    yield url
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _public_tables(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as c:
        return c.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
        ).fetchall()


def test_a_database_holding_only_an_original_registry_says_to_import_it(
    original_url: str, labctl_env: dict[str, str]
) -> None:
    env = {**labctl_env, "LABCTL_DATABASE_URL": original_url}
    before = _public_tables(original_url)
    proc = run_cli(env, "status")
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "labctl import" in lines[0] and "original labctl registry" in lines[0]
    with psycopg.connect(original_url) as c:
        assert c.execute("SELECT to_regnamespace('labctl')").fetchone() == (None,)
    assert _public_tables(original_url) == before


def test_labctl_shares_a_database_with_an_original_registry_without_touching_it(
    original_url: str, labctl_env: dict[str, str]
) -> None:
    before = _public_tables(original_url)
    with connect(original_url) as c:
        ensure_schema(c, beside_original=True)
    env = {**labctl_env, "LABCTL_DATABASE_URL": original_url, "LABCTL_USER": "alice"}
    run_cli(env, "register-external", "--alias", "ds", "--path", "/tmp", check=True)
    assert "ds" in run_cli(env, "alias", "ls", check=True).stdout
    assert _public_tables(original_url) == before
    with psycopg.connect(original_url) as c:
        assert c.execute("SELECT count(*) FROM public.events").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM labctl.events").fetchone()[0] > 0  # type: ignore[index]
