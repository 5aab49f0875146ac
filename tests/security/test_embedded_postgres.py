"""Issue 13 item 6: the embedded Postgres is reachable by its owner only and leaves the user's directories alone."""

from __future__ import annotations

import os
import pwd
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from labctl.db import remove_embedded
from tests.conftest import run_cli
from tests.security.conftest import as_user

PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(type(e).__name__)
else:
    print("connected")
"""


@pytest.fixture
def private_home(tmp_path: Path) -> Iterator[Path]:
    """A LABCTL_HOME inside a 0700 directory (like /root), long enough that the socket cannot sit in it."""
    parent = tmp_path / "private"
    parent.mkdir(mode=0o700)
    home = parent / ("h" * 90)
    yield home
    remove_embedded(home)


def _modes(path: Path) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in [path, *path.parents]}


def test_embedded_postgres_keeps_its_socket_private_and_never_opens_the_users_directories(
    labctl_env: dict[str, str], private_home: Path, os_user: Callable[[str], pwd.struct_passwd]
) -> None:
    env = {**labctl_env, "LABCTL_HOME": str(private_home)}
    env.pop("LABCTL_DATABASE_URL")
    before = _modes(private_home.parent)

    url = run_cli(env, "db", "url", check=True).stdout.strip()
    assert run_cli(env, "status", check=True).returncode == 0  # usable by its owner

    assert _modes(private_home.parent) == before, "labctl changed the permissions of the user's directories"
    params = conninfo_to_dict(url)
    socket_dir = Path(str(params["host"]))
    socket_path = socket_dir / f".s.PGSQL.{params.get('port') or 5432}"
    assert stat.S_ISSOCK(socket_path.stat().st_mode)
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    assert not str(socket_dir).startswith(os.environ.get("XDG_RUNTIME_DIR") or "/nonexistent")

    # Another local user cannot reach the trust-authenticated socket.
    mallory = os_user("labsec_mallory")
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(socket_path)],
        capture_output=True,
        text=True,
        timeout=30,
        **as_user(mallory),  # type: ignore[arg-type]
    )
    assert probe.stdout.strip() == "PermissionError", probe.stdout + probe.stderr
    with socket.socket(socket.AF_UNIX) as own:  # the owner (root here) can
        own.connect(str(socket_path))
