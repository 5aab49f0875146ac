"""Setting labctl up on a machine: writing cluster.toml, user directories, systemd user units.

``init`` builds a config from the built-in local profile plus what it finds
(SLURM via ``sinfo``) and what the user says; ``--join`` links to a group's
shared file (later edits by the admin apply), ``--use`` copies it (yours to
edit). ``add_user`` prepares a user's directories on the shared storage.
``install_unit`` and friends write systemd *user* units for the agent and the
web page, and drive ``systemctl --user`` when a user session is there.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

from labctl.app import check_user_name
from labctl.errors import InputError, UserError
from labctl.files import (
    ClusterConfig,
    Database,
    dump_cluster_toml,
    load_cluster_config,
    local_profile,
)
from labctl.layout import user_runs_dir
from labctl.secrets import URL_WITH_PASSWORD
from labctl.settings import settings_from_env

SchedulerChoice = Literal["auto", "local", "slurm"]
ServiceName = Literal["agent", "ui"]

#: the mode of shared directories: group-writable, and new entries inherit the group (setgid)
SHARED_DIR_MODE = 0o2775

# ------------------------------------------------------------------- config


def config_destination(explicit: Path | None = None) -> Path:
    """Where ``init`` writes: ``--cluster``, ``$LABCTL_CLUSTER``, else the XDG config path."""
    if explicit is not None:
        return explicit.expanduser()
    if env_path := settings_from_env().cluster:
        return env_path
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "labctl" / "cluster.toml"


def parse_assignments(values: Iterable[str], option: str, allowed: Iterable[str] | None = None) -> dict[str, str]:
    """``name=path`` pairs from a repeated option; paths made absolute. Raises InputError."""
    known = tuple(allowed) if allowed is not None else None
    found: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise InputError(f"{option} {value!r}: expected NAME=PATH")
        if known is not None and name not in known:
            raise InputError(f"{option} {value!r}: unknown kind {name!r}; expected one of: {', '.join(known)}")
        found[name] = str(Path(path).expanduser().absolute())
    return found


@dataclass(frozen=True)
class SlurmProbe:
    partitions: list[str]
    default_partition: str | None


def probe_slurm() -> SlurmProbe | None:
    """SLURM as this machine sees it: sinfo and sbatch on PATH (or in ``$LABCTL_SLURM_BIN_DIR``)
    and ``sinfo`` answering; None otherwise."""
    bin_dir = settings_from_env().slurm_bin_dir
    sinfo, sbatch = (shutil.which(name, path=bin_dir) for name in ("sinfo", "sbatch"))
    if not sinfo or not sbatch:
        return None
    try:
        proc = subprocess.run([sinfo, "-h", "-o", "%P"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    names = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    # sinfo marks the default partition with a trailing '*'
    default = next((n.rstrip("*") for n in names if n.endswith("*")), None)
    return SlurmProbe(partitions=[n.rstrip("*") for n in names], default_partition=default)


def build_config(
    *,
    base: ClusterConfig,
    scheduler: Literal["local", "slurm"] | None = None,
    partition: str | None = None,
    name: str | None = None,
    runs_base: str | None = None,
    artifact_roots: Mapping[str, str] | None = None,
    output_roots: Mapping[str, str] | None = None,
    repos: Mapping[str, str] | None = None,
    shared_group: str | None = None,
    database_url: str | None = None,
) -> ClusterConfig:
    """``base`` with the user's choices laid over it (None: keep the base's)."""
    fs = base.filesystem
    fs = msgspec.structs.replace(
        fs,
        runs_base=str(Path(runs_base).expanduser().absolute()) if runs_base else fs.runs_base,
        shared_group=shared_group or fs.shared_group,
        artifact_roots={**fs.artifact_roots, **(artifact_roots or {})},
        output_roots={**fs.output_roots, **(output_roots or {})},
    )
    config = msgspec.structs.replace(
        base,
        name=name or base.name,
        filesystem=fs,
        repos={**base.repos, **(repos or {})},
        database=Database(url=database_url) if database_url else base.database,
    )
    if scheduler is not None:
        config = msgspec.structs.replace(
            config,
            scheduler=msgspec.structs.replace(config.scheduler, kind=scheduler),
            slurm=msgspec.structs.replace(config.slurm, partition=partition or config.slurm.partition),
        )
    return config


def profile_for(scheduler: SchedulerChoice, home: Path, *, detect: bool = True) -> tuple[ClusterConfig, str]:
    """The starting config for ``init`` and one line saying how the scheduler was chosen
    (``detect`` False: SLURM is not probed, so "auto" means local)."""
    probe = probe_slurm() if detect and scheduler in ("auto", "slurm") else None
    if scheduler == "local" or (scheduler == "auto" and probe is None):
        if scheduler == "local":
            why = "asked for"
        elif not detect:
            why = "not probed: --no-detect; pass --scheduler slurm for SLURM"
        else:
            why = "no SLURM found (sinfo/sbatch missing or not answering)"
        return build_config(base=local_profile(home), scheduler="local"), f"scheduler: local ({why})"
    partition = probe.default_partition if probe else None
    config = build_config(base=local_profile(home), scheduler="slurm", partition=partition)
    config = msgspec.structs.replace(config, name=os.uname().nodename.split(".")[0] or "cluster")
    if probe is None:
        return config, "scheduler: slurm (asked for; SLURM was not probed here, so no partition is set)"
    return config, f"scheduler: slurm (found partitions: {', '.join(probe.partitions) or 'none'}; default {partition})"


def config_text(config: ClusterConfig, source: str) -> str:
    """The cluster.toml text ``init`` writes, with one comment saying where it came from."""
    return f"# {source}\n" + dump_cluster_toml(config)


def check_can_write(dest: Path, *, force: bool) -> None:
    """Refuse to replace an existing config (or a link to one) without ``--force``."""
    if (dest.exists() or dest.is_symlink()) and not force:
        raise UserError(f"{dest} already exists; pass --force to replace it")


def write_config(dest: Path, text: str, *, force: bool) -> None:
    """Write ``text`` to ``dest`` atomically; never replaces an existing file without ``force``."""
    check_can_write(dest, force=force)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    # a database URL with a password makes the file a secret: readable by its owner only
    mode = 0o600 if URL_WITH_PASSWORD.search(text) else 0o644
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)  # whatever the umask
    _replace(tmp, dest, force=force)


def link_config(dest: Path, shared: Path, *, force: bool) -> None:
    """Make ``dest`` a symlink to the shared config (so later edits to it apply here)."""
    check_can_write(dest, force=force)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(shared)
    _replace(tmp, dest, force=force)


def copy_config(dest: Path, shared: Path, *, force: bool) -> None:
    """Make ``dest`` a copy of the shared config, byte for byte (later edits to it do not apply here)."""
    check_can_write(dest, force=force)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(shared, tmp)
    _replace(tmp, dest, force=force)


def _replace(tmp: Path, dest: Path, *, force: bool) -> None:
    try:
        if force:
            os.replace(tmp, dest)
        else:
            # link() fails if dest appeared meanwhile: a concurrent init never gets overwritten
            os.link(tmp, dest, follow_symlinks=False)
    except FileExistsError:
        raise UserError(f"{dest} already exists; pass --force to replace it") from None
    finally:
        tmp.unlink(missing_ok=True)


def shared_config(path: Path, dest: Path) -> tuple[Path, ClusterConfig]:
    """The absolute path and contents of a config to ``--use``/``--join``, checked."""
    if not path.expanduser().is_file():
        raise UserError(f"cluster config {path} does not exist")
    shared = path.expanduser().absolute()
    if dest.absolute() == shared or (dest.exists() and dest.resolve() == shared.resolve()):
        raise UserError(f"{shared} is already the config at {dest}")
    return shared, load_cluster_config(shared)


# -------------------------------------------------------------------- users


@dataclass(frozen=True)
class DirChange:
    path: Path
    created: bool
    group: str | None  # the group set on it, if any
    note: str | None = None  # e.g. the shared group does not exist here
    error: str | None = None  # why it could not be made

    def describe(self) -> str:
        if self.error:
            return f"failed  {self.path}: {self.error}"
        what = "created" if self.created else "exists "
        how = f" (group {self.group}, mode {SHARED_DIR_MODE:o})" if self.group else ""
        return f"{what} {self.path}{how}" + (f"  [{self.note}]" if self.note else "")


def user_dirs(config: ClusterConfig, user: str) -> list[Path]:
    """A user's directories: run dirs, alias dirs per artifact kind, output dirs per output type."""
    fs = config.filesystem
    dirs = [user_runs_dir(fs.runs_base, user)]
    dirs += [Path(root) / "aliases" / user for root in fs.artifact_roots.values()]
    dirs += [Path(root) / user for root in fs.output_roots.values()]
    return list(dict.fromkeys(dirs))


def add_user(config: ClusterConfig, user: str) -> list[DirChange]:
    """Create ``user``'s directories (idempotent), giving them the shared group when it exists.

    Run as root for a user with an account here, the directories are also made theirs.
    Raises UserError for the first directory that cannot be made.
    """
    changes = prepare_user_dirs(config, user)
    failed = next((c for c in changes if c.error), None)
    if failed is not None:
        raise UserError(f"cannot prepare {failed.path}: {failed.error}")
    return changes


def prepare_user_dirs(config: ClusterConfig, user: str) -> list[DirChange]:
    """``add_user`` that goes on past a directory it cannot make (``init`` reports it; doctor rechecks)."""
    check_user_name(user)
    gid, note = _shared_gid(config.filesystem.shared_group)
    uid = _uid_to_give(user)
    changes = []
    for path in user_dirs(config, user):
        created = not path.is_dir()
        try:
            path.mkdir(parents=True, exist_ok=True)
            if uid != -1 or gid != -1:
                os.chown(path, uid, gid)
            if gid != -1:
                path.chmod(SHARED_DIR_MODE)
        except OSError as exc:
            changes.append(DirChange(path, False, None, note, error=exc.strerror or str(exc)))
            continue
        changes.append(DirChange(path, created, config.filesystem.shared_group if gid != -1 else None, note))
    return changes


def add_database_role(url: str, user: str, *, service: bool = False) -> str:
    """Give ``user`` a login role of their own (a member of labctl_user, or labctl_service); one line saying so."""
    import psycopg

    from labctl.db import connect, ensure_login_role

    check_user_name(user)
    group = "labctl_service" if service else "labctl_user"
    try:
        with connect(url) as conn:
            created = ensure_login_role(conn, user, group)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise UserError(
            f"cannot create database role {user}: {exc.diag.message_primary or exc} "
            "(run as the database owner, or pass --no-db-role)"
        ) from exc
    return f"postgres role {user}: {'created' if created else 'already there'}, member of {group}"


def _shared_gid(group: str | None) -> tuple[int, str | None]:
    if not group:
        return -1, None
    try:
        return grp.getgrnam(group).gr_gid, None
    except KeyError:
        return -1, f"group {group} does not exist here; group left as is"


def _uid_to_give(user: str) -> int:
    if os.geteuid() != 0:
        return -1
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return -1


# ------------------------------------------------------------------ systemd

UNIT_NAMES: dict[ServiceName, str] = {"agent": "labctl-agent.service", "ui": "labctl-ui.service"}
_DESCRIPTIONS: dict[ServiceName, str] = {
    "agent": "labctl agent (local jobs, pipelines, sweeps, evals, SLURM reconcile)",
    "ui": "labctl web page (labctl serve)",
}
DEFAULT_BIND = "127.0.0.1:8765"
#: variables a service needs to see the same world as the shell that installed it
_PASSED_ENV = ("LABCTL_DATABASE_URL", "LABCTL_HOME")


def unit_dir() -> Path:
    """Where systemd looks for a user's own units (``$XDG_CONFIG_HOME/systemd/user``)."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user"


def labctl_command() -> list[str]:
    """The absolute command line of the labctl running now."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name == "labctl":
        found = argv0 if os.sep in argv0 else shutil.which(argv0)
        if found:
            return [str(Path(found).absolute())]
    return [sys.executable, "-m", "labctl.cli"]


def unit_text(
    service: ServiceName, command: list[str], cluster: Path | None, env: Mapping[str, str], *, bind: str = DEFAULT_BIND
) -> str:
    """A systemd user unit running ``labctl [--cluster P] agent|serve --bind B``, restarted when it fails."""
    args = ["serve", "--bind", bind] if service == "ui" else ["agent"]
    argv = [*command, *(["--cluster", str(cluster)] if cluster else []), *args]
    lines = [
        "[Unit]",
        f"Description={_DESCRIPTIONS[service]}",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={' '.join(_unit_quote(a) for a in argv)}",
        "Restart=on-failure",
        "RestartSec=5",
    ]
    lines += [f"Environment={_unit_quote(f'{k}={v}')}" for k, v in env.items()]
    lines += ["", "[Install]", "WantedBy=default.target", ""]
    return "\n".join(lines)


def _unit_quote(word: str) -> str:
    # '%' starts a systemd specifier (URL escapes like %40 would be mangled); quote words with spaces
    word = word.replace("%", "%%")
    if word and not any(c in word for c in " \t\"'\\;$"):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$") + '"'


def service_env() -> dict[str, str]:
    return {k: os.environ[k] for k in _PASSED_ENV if os.environ.get(k)}


def check_bind(bind: str) -> None:
    """``HOST:PORT`` as ``serve --bind`` takes it; raises InputError."""
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in bind):
        raise InputError(f"--bind {bind!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")


def install_unit(service: ServiceName, cluster: Path | None, *, bind: str = DEFAULT_BIND) -> Path:
    """Write (or rewrite) the unit file; readable only by its owner (it may hold a database password)."""
    path = unit_dir() / UNIT_NAMES[service]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(unit_text(service, labctl_command(), cluster, service_env(), bind=bind))
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return path


def install_agent_for_init(cluster: Path, *, force: bool) -> str:
    """What ``init`` does about the agent unit, in one line: installed and started, or why not."""
    if not user_manager_available():
        return (
            "no systemd user session here: agent unit not installed "
            "(run `labctl agent`, or later `labctl service install --agent`)"
        )
    path = unit_dir() / UNIT_NAMES["agent"]
    if path.exists() and not force:
        return f"{path} exists: left as it is (--force replaces it)"
    install_unit("agent", cluster)
    for args in (["daemon-reload"], ["enable", "--now", UNIT_NAMES["agent"]]):
        proc = systemctl(*args)
        if proc.returncode != 0:
            return f"wrote {path}, but {systemctl_line(*args)} failed: {(proc.stderr or proc.stdout).strip()}"
    return f"installed and started {UNIT_NAMES['agent']}"


def remove_unit(service: ServiceName) -> Path | None:
    """Delete the unit file; its path, or None when there was none."""
    path = unit_dir() / UNIT_NAMES[service]
    if not path.exists():
        return None
    path.unlink()
    return path


def user_manager_available() -> bool:
    """``systemctl --user`` works here (systemd installed and a user session running)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return False
    try:
        proc = subprocess.run(
            [systemctl, "--user", "show-environment"], capture_output=True, text=True, timeout=15, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    """``systemctl --user ARGS``, output captured."""
    return subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True, timeout=60, check=False)


def systemctl_line(*args: str) -> str:
    return shlex.join(["systemctl", "--user", *args])
