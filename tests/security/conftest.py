"""Fixtures for the security tests: real OS users and real Postgres roles beside the ones running the tests
(CI runs as root)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from labctl.db import as_role, ensure_login_role
from labctl.embedded import system_tool


def _can_run_as_another_user() -> str | None:
    """Why the tests that need a second OS user cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to create and switch to other OS users"
    python = Path(sys.executable).resolve()
    if any(not (p.stat().st_mode & 0o001) for p in python.parents):
        return f"{python} is not reachable by other users"
    return None


@pytest.fixture(scope="session")
def os_user() -> Callable[[str], pwd.struct_passwd]:
    """``os_user(name)``: a real OS account (made with useradd if missing), for processes run as it."""
    why = _can_run_as_another_user()
    if why:
        pytest.skip(why)

    def make(name: str) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            useradd = [system_tool("useradd"), "--no-create-home", "--shell", "/bin/sh", name]
            subprocess.run(useradd, check=True, capture_output=True)
            return pwd.getpwnam(name)

    return make


def as_user(account: pwd.struct_passwd) -> dict[str, object]:
    """``subprocess`` keyword arguments that run a process as ``account``."""
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


# ------------------------------------------------------- a registry shared by two OS users


class Shared:
    """A registry on a real Postgres and shared directories that several OS users reach (as on a cluster)."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self.cluster = root / "cluster.toml"
        shared = {name: root / name for name in ("runs", "outputs", "artifacts")}
        # <runs_base>/runs/ holds each user's run dirs (the original's layout; `admin add-user` makes them)
        for path in [*shared.values(), shared["runs"] / "runs"]:
            path.mkdir()
            path.chmod(0o1777)  # like a group's setgid 2770 directory, for users of no common group
        roots = "\n".join(f'{kind} = "{shared["artifacts"]}"' for kind in ("dataset", "checkpoint", "eval_result"))
        outputs = "\n".join(f'{kind} = "{shared["outputs"]}"' for kind in ("dataset", "checkpoint_stream"))
        self.cluster.write_text(
            f'name = "shared"\n[scheduler]\nkind = "local"\n[filesystem]\nruns_base = "{shared["runs"]}"\n'
            f"[filesystem.artifact_roots]\n{roots}\n[filesystem.output_roots]\n{outputs}\n"
        )
        self.cluster.chmod(0o644)

    def env(self, account: pwd.struct_passwd, **extra: str) -> dict[str, str]:
        home = self.root / "homes" / account.pw_name
        if not home.exists():
            home.mkdir(parents=True)
            os.chown(home, account.pw_uid, account.pw_gid)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LABCTL_HOME": str(home / ".labctl"),
            "LABCTL_DATABASE_URL": self.url,
            "LABCTL_CLUSTER": str(self.cluster),
            "LABCTL_DB_RETRY_SECONDS": "2",
            "LABCTL_AGENT_STALE_SECONDS": "2",
        }
        return {**env, **extra}

    def cli(self, account: pwd.struct_passwd, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        from tests.conftest import labctl_bin

        proc = subprocess.run(
            [*labctl_bin(), *args],
            env=self.env(account),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root,
            **as_user(account),  # type: ignore[arg-type]
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"labctl {' '.join(args)} as {account.pw_name}: {proc.stdout}\n{proc.stderr}")
        return proc

    def agent(self, account: pwd.struct_passwd, *args: str) -> subprocess.Popen[bytes]:
        from tests.conftest import labctl_bin

        log = open(self.root / f"agent-{account.pw_name}.log", "ab")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            [*labctl_bin(), "agent", *args],
            env=self.env(account),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            **as_user(account),  # type: ignore[arg-type]
        )


@pytest.fixture(scope="session")
def shared_server(os_user: Callable[[str], pwd.struct_passwd]) -> Iterator[str]:
    """A Postgres whose socket every local user reaches (test only: trust auth on an open socket)."""
    from labctl.embedded import _bin_dir, _service_account

    account = _service_account()
    assert account is not None
    bin_dir = _bin_dir(account)
    top = Path(tempfile.mkdtemp(prefix="labsec-pg-", dir="/tmp"))
    top.chmod(0o755)
    pgdata, sock = top / "data", top / "sock"
    pgdata.mkdir(mode=0o700)
    sock.mkdir()
    sock.chmod(0o777)
    os.chown(pgdata, account.pw_uid, account.pw_gid)

    def pg(program: str, *args: str, check: bool = True) -> None:
        subprocess.run(
            [str(bin_dir / program), "-D", str(pgdata), *args],
            capture_output=True,
            check=check,
            cwd=top,
            **as_user(account),  # type: ignore[arg-type]
        )

    pg("initdb", "-U", "postgres", "--auth=trust")
    open_socket = f"-c listen_addresses='' -c unix_socket_directories={sock} -c unix_socket_permissions=0777"
    pg("pg_ctl", "-w", "-l", str(pgdata / "log"), "-o", open_socket, "start")
    try:
        yield f"postgresql://postgres@/postgres?host={sock}"
    finally:
        pg("pg_ctl", "-m", "immediate", "stop", check=False)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def shared(shared_server: str) -> Iterator[Shared]:
    """A fresh database on the shared server and fresh shared directories, for one test."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    from labctl.db import connect, ensure_schema

    name = f"labsec_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(shared_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = make_conninfo(shared_server, dbname=name)
    with connect(url) as conn:
        ensure_schema(conn)
    root = Path(tempfile.mkdtemp(prefix="labsec-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield Shared(root, url)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        with psycopg.connect(shared_server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def role_url(db_url: str) -> Iterator[Callable[[str], str]]:
    """``make(group)``: a new login role, member of ``group``; returns this test database's URL as that role."""
    made: list[str] = []

    def make(group: str) -> str:
        name = f"sec_{group.removeprefix('labctl_')}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(db_url, autocommit=True) as admin:
            ensure_login_role(admin, name, group)
        made.append(name)
        return as_role(db_url, name)

    yield make
    with psycopg.connect(db_url, autocommit=True) as admin:
        for name in made:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
