"""Test fixtures: a real Postgres (embedded, or LABCTL_DATABASE_URL), one fresh database per test.

A template database holds the schema; each test gets ``CREATE DATABASE ...
TEMPLATE``, so tests never see each other's data and schema creation is paid
once per session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from labctl.db import connect, ensure_schema

REPO = Path(__file__).resolve().parent.parent
#: the user the CLI acts as in the acceptance tests (``LABCTL_USER``)
USER = "alice"
T = TypeVar("T")
TEMPLATE = "labctl_test_template"


def _with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A maintenance URL of a real server: LABCTL_DATABASE_URL, else a fresh embedded one."""
    external = os.environ.get("LABCTL_DATABASE_URL")
    if external:
        yield external
        return
    from labctl.db import embedded_url, remove_embedded

    home = Path(tmp_path_factory.mktemp("pg", numbered=True))
    url = embedded_url(home)
    yield _with_dbname(url, "postgres")
    remove_embedded(home)  # as root the data may live outside home (labctl/embedded.py)


@pytest.fixture(scope="session")
def template_db(server_url: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        admin.execute(f"CREATE DATABASE {TEMPLATE}")
    with connect(_with_dbname(server_url, TEMPLATE)) as conn:
        ensure_schema(conn)
    return TEMPLATE


@pytest.fixture
def db_url(server_url: str, template_db: str) -> Iterator[str]:
    """The URL of a fresh database with labctl's schema, dropped after the test."""
    name = f"labctl_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
        # Database-level grants are not copied from a template (roles.sql made them on the template).
        admin.execute(f"GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {name} TO labctl_app")
    yield _with_dbname(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def original_url(server_url: str) -> Iterator[str]:
    """A database holding an original registry (newest schema) in public, and nothing of ours."""
    name = f"labctl_o_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = _with_dbname(server_url, name)
    from tests.original.ddl import VERSIONS

    with psycopg.connect(url, autocommit=True) as c:
        c.execute(VERSIONS["0003"].encode())
    yield url
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with connect(db_url) as c:
        yield c


@pytest.fixture
def labctl_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for running the real ``labctl`` CLI against this test's database."""
    env = dict(os.environ)
    env.update(
        LABCTL_DATABASE_URL=db_url,
        LABCTL_HOME=str(tmp_path / "home"),
        LABCTL_DB_RETRY_SECONDS="2",
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
    )
    env.pop("LABCTL_CLUSTER", None)
    return env


def labctl_bin() -> list[str]:
    exe = shutil.which("labctl", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "labctl.cli"]


def run_cli(
    env: dict[str, str], *args: str, check: bool = False, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``labctl ARGS`` in a subprocess, as a user would."""
    proc = subprocess.run([*labctl_bin(), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"labctl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def env(labctl_env: dict[str, str]) -> dict[str, str]:
    """The CLI's environment, acting as ``USER``."""
    return {**labctl_env, "LABCTL_USER": USER}


@pytest.fixture
def home(env: dict[str, str]) -> Path:
    return Path(env["LABCTL_HOME"])


def wait_for(condition: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def without_user_manager(env: dict[str, str]) -> dict[str, str]:
    """``env`` that can never reach a real systemd user manager (service tests write units, start nothing)."""
    return {k: v for k, v in env.items() if k not in ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS")}


@contextmanager
def agent(env: dict[str, str], log: Path, *args: str, **extra_env: str) -> Iterator[subprocess.Popen[bytes]]:
    """A `labctl agent` subprocess, stopped (SIGTERM) at the end unless the test killed it."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*labctl_bin(), "agent", *args], env={**env, **extra_env}, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
