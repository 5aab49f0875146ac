"""cluster.toml: where runs, artifacts and repos live, which scheduler, which database."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from labctl.files.decode import UnknownKey, beside, convert, dotted, line_of, read_toml, strip_unknown_keys
from labctl.files.errors import FileFormatError
from labctl.files.units import parse_mem_mb
from labctl.settings import settings_from_env

#: artifact kinds labctl itself registers (the local profile has a root for each)
ARTIFACT_KINDS = ("checkpoint", "dataset", "eval_result", "model", "external")
#: output types a recipe may declare (the local profile has a root for each)
OUTPUT_TYPES = ("checkpoint_stream", "checkpoint", "dataset", "eval_result", "model")


class _Section(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True, frozen=True):
    pass


class Filesystem(_Section, frozen=True):
    runs_base: str
    shared_group: str | None = None  # unix group given to run dirs and artifacts
    artifact_roots: dict[str, str] = {}  # artifact kind -> root directory
    output_roots: dict[str, str] = {}  # output type -> root directory
    #: the original's SQLite registry before its Postgres PR; accepted, not used (the log is in Postgres)
    registry_db: str | None = None


class Scheduler(_Section, frozen=True):
    #: the original's default; the built-in local profile says "local"
    kind: Literal["slurm", "local"] = "slurm"
    #: the SLURM commands, as names on PATH or absolute paths (the original's [scheduler] keys)
    sbatch: str = "sbatch"
    sacct: str = "sacct"
    scancel: str = "scancel"
    squeue: str = "squeue"
    #: the original's grace before a job neither sacct nor squeue knows is sealed; accepted, not used
    #: (a job accounting cannot see is waited for here, see docs/COMPAT.md)
    missing_job_grace_secs: int | None = None


class SlurmSettings(_Section, frozen=True):
    qos: str | None = None
    gres_gpu_syntax: str = "gpu:{n}"  # how `gpus = n` becomes `--gres=...`
    partition: str | None = None
    account: str | None = None


class JobNameThrottle(_Section, frozen=True):
    """The original's ``[dispatch.throttle]``: at most ``max_concurrent`` of the user's SLURM jobs named
    ``job_name`` running or eligible; the rest are held (``scontrol uhold``) and released as slots free."""

    job_name: str
    max_concurrent: int


class SourceGc(_Section, frozen=True):
    """The original's ``[dispatch.gc]``: the agent deletes the ``source/`` snapshot of runs that ended
    at least ``min_terminal_age_secs`` ago, every ``interval_secs`` (the provenance bundle stays)."""

    enabled: bool = True
    interval_secs: int = 300
    min_terminal_age_secs: int = 600


class Dispatch(_Section, frozen=True):
    reconcile_interval_secs: int = 30
    evald_interval_secs: int = 60
    policies_dir: str | None = None
    throttle: JobNameThrottle | None = None
    #: None without a [dispatch] table; with one, on by default (the original's agent did nothing without it)
    gc: SourceGc | None = None
    #: the group's service account: only it may run `labctl agent --service` (act for every user)
    service_user: str | None = None


class Throttle(_Section, frozen=True):
    """Limits the agent's throttle holds queued runs back for; None = unlimited."""

    max_running_per_user: int | None = None
    max_running: int | None = None
    max_queued_per_user: int | None = None


class Database(_Section, frozen=True):
    url: str | None = None  # None: LABCTL_DATABASE_URL, else [postgres], else the embedded Postgres


class Postgres(_Section, frozen=True):
    """The original's ``[postgres]``: where its registry is; here it becomes the database URL."""

    host: str  # a TCP host, or an absolute path: the directory of the Unix socket
    port: int = 5432
    database: str = "labctl"
    user: str | None = None  # None: $USER
    password_env: str | None = None  # name of the variable holding the password; else ~/.pgpass, PG*
    # the original's pool and session settings; accepted, see docs/COMPAT.md for which are used
    max_connections: int = 8
    acquire_timeout_secs: int | None = None
    idle_timeout_secs: int | None = None
    max_lifetime_secs: int | None = None
    statement_timeout_ms: int | None = None
    idle_session_timeout_ms: int | None = None
    log_min_duration_statement_ms: int | None = None
    max_parallel_workers_per_gather: int | None = None


class Remote(_Section, frozen=True):
    """The original's ``[remote]``: how other clusters reach this one over ssh; only read when this
    file describes a foreign cluster, never for the cluster a command runs on."""

    ssh_alias: str | None = None
    host: str | None = None
    ssh_user: str | None = None


class Server(_Section, frozen=True):
    """The original's ``[server]`` (before its Postgres PR: the daemon its CLI submitted through);
    accepted, not used: every command here talks to the database itself."""

    url: str = "http://127.0.0.1:8765"
    timeout_secs: int = 120


class Local(_Section, frozen=True):
    slots: int | None = None  # concurrent local runs; None = one per CPU
    #: what the agent packs jobs into; None = detected (usable CPUs, MemTotal, ``nvidia-smi -L``)
    cpus: int | None = None
    mem: str | None = None
    gpus: list[str] | None = None  # device ids, as CUDA_VISIBLE_DEVICES takes them


class ClusterConfig(_Section, frozen=True):
    name: str
    filesystem: Filesystem
    repos: dict[str, str] = {}  # logical repo name -> path of a git checkout
    scheduler: Scheduler = msgspec.field(default_factory=Scheduler)
    slurm: SlurmSettings = msgspec.field(default_factory=SlurmSettings)
    dispatch: Dispatch = msgspec.field(default_factory=Dispatch)
    env: dict[str, str] = {}  # set for every run; a recipe's [env] wins
    #: environment modules loaded (``module load``) at the top of every job script
    modules: list[str] = []
    throttle: Throttle = msgspec.field(default_factory=Throttle)
    database: Database = msgspec.field(default_factory=Database)
    postgres: Postgres | None = None
    remote: Remote | None = None
    server: Server | None = None
    local: Local = msgspec.field(default_factory=Local)


def find_cluster_config(explicit: Path | None = None) -> Path | None:
    """The cluster.toml to use: ``--cluster``, ``$LABCTL_CLUSTER``,
    ``$XDG_CONFIG_HOME/labctl/cluster.toml``, ``~/.config/labctl/cluster.toml``.

    The first two are returned even when missing (loading then says so);
    None means "use the built-in local profile".
    """
    if explicit is not None:
        return explicit
    if env_path := settings_from_env().cluster:
        return env_path
    candidates = []
    if xdg := os.environ.get("XDG_CONFIG_HOME"):
        candidates.append(Path(xdg) / "labctl" / "cluster.toml")
    candidates.append(Path.home() / ".config" / "labctl" / "cluster.toml")
    return next((c for c in candidates if c.is_file()), None)


def load_cluster_config(path: str | Path, *, strict: bool = False) -> ClusterConfig:
    """Read and check a cluster.toml; paths come back absolute (``~`` expanded,
    relative ones taken from the file's directory). Raises FileFormatError.

    A key no version of labctl knows is left out with one warning line on
    stderr (the original labctl ignores such keys, and a team's file may carry
    them); ``strict`` makes it an error.
    """
    config, unknown = read_cluster_config(path, strict=strict)
    for key in unknown:
        _warn_once(str(key))
    return config


def read_cluster_config(path: str | Path, *, strict: bool = False) -> tuple[ClusterConfig, list[UnknownKey]]:
    """``load_cluster_config`` without the printing: the config and the unknown keys it left out."""
    path = Path(path)
    raw, text = read_toml(path)
    cleaned, unknown = strip_unknown_keys(raw, ClusterConfig, path, text)
    if strict and unknown:
        raise unknown[0].error()
    config = convert(cleaned, ClusterConfig, path, text)
    if isinstance(cleaned.get("dispatch"), dict) and "gc" not in cleaned["dispatch"]:
        config = msgspec.structs.replace(config, dispatch=msgspec.structs.replace(config.dispatch, gc=SourceGc()))
    _validate(config, path, text)
    return _absolute_paths(config, path), unknown


_warned: set[str] = set()


def _warn_once(line: str) -> None:
    # a command may load its config more than once; the user reads each warning once
    if line not in _warned:
        _warned.add(line)
        print(f"labctl: warning: {line}", file=sys.stderr)


def _validate(config: ClusterConfig, path: Path, text: str) -> None:
    def fail(parts: list[str | int], message: str) -> None:
        raise FileFormatError(path, dotted(parts), message, line=line_of(text, parts))

    if not config.name:
        fail(["name"], "must not be empty")
    if not config.filesystem.runs_base:
        fail(["filesystem", "runs_base"], "must not be empty; expected a directory")
    if "{n}" not in config.slurm.gres_gpu_syntax:
        fail(["slurm", "gres_gpu_syntax"], 'must contain {n}, e.g. "gpu:{n}"')
    for key in ("reconcile_interval_secs", "evald_interval_secs"):
        if getattr(config.dispatch, key) < 1:
            fail(["dispatch", key], "must be 1 or more seconds")
    for key in ("max_running_per_user", "max_running", "max_queued_per_user"):
        value = getattr(config.throttle, key)
        if value is not None and value < 0:
            fail(["throttle", key], "must be 0 or more")
    throttle = config.dispatch.throttle
    if throttle is not None:
        if throttle.max_concurrent < 1:
            fail(["dispatch", "throttle", "max_concurrent"], "must be 1 or more")
        if not throttle.job_name.strip():
            fail(["dispatch", "throttle", "job_name"], "must not be empty; expected a SLURM job name (a recipe name)")
    gc = config.dispatch.gc
    if gc is not None and gc.enabled and gc.interval_secs < 1:
        fail(["dispatch", "gc", "interval_secs"], "must be 1 or more seconds while gc is enabled")
    if gc is not None and gc.min_terminal_age_secs < 0:
        fail(["dispatch", "gc", "min_terminal_age_secs"], "must be 0 or more seconds")
    if config.postgres is not None:
        if not config.postgres.host:
            fail(["postgres", "host"], "must not be empty; expected a host name or a socket directory")
        if not 0 < config.postgres.port < 65536:
            fail(["postgres", "port"], "expected a TCP port, 1 to 65535")
    for key in ("sbatch", "sacct", "scancel", "squeue"):
        if not getattr(config.scheduler, key):
            fail(["scheduler", key], f"must not be empty; expected a command, e.g. {key!r}")
    for index, module in enumerate(config.modules):
        if not module.strip() or "\n" in module:
            fail(["modules", index], 'expected a module name, e.g. "cuda/12.4"')
    if config.local.slots is not None and config.local.slots < 1:
        fail(["local", "slots"], "must be 1 or more")
    if config.local.cpus is not None and config.local.cpus < 1:
        fail(["local", "cpus"], "must be 1 or more")
    if config.local.mem is not None:
        try:
            parse_mem_mb(config.local.mem)
        except ValueError as exc:
            fail(["local", "mem"], str(exc))
    gpus = config.local.gpus or []
    if len(set(gpus)) != len(gpus) or not all(g.strip() and "," not in g for g in gpus):
        fail(["local", "gpus"], 'expected distinct device ids, e.g. ["0", "1"]')
    for key in config.env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            fail(["env", key], "not a valid environment variable name")


def _absolute_paths(config: ClusterConfig, path: Path) -> ClusterConfig:
    def absolute(value: str) -> str:
        return str(beside(path, value))

    fs = config.filesystem
    dispatch = config.dispatch
    return msgspec.structs.replace(
        config,
        filesystem=msgspec.structs.replace(
            fs,
            runs_base=absolute(fs.runs_base),
            artifact_roots={k: absolute(v) for k, v in fs.artifact_roots.items()},
            output_roots={k: absolute(v) for k, v in fs.output_roots.items()},
        ),
        repos={k: absolute(v) for k, v in config.repos.items()},
        dispatch=msgspec.structs.replace(
            dispatch,
            policies_dir=absolute(dispatch.policies_dir) if dispatch.policies_dir else None,
        ),
    )


def local_profile(home: Path) -> ClusterConfig:
    """The built-in profile used without a cluster.toml: everything under ``home``."""
    home = home.expanduser().absolute()
    return ClusterConfig(
        name="local",
        filesystem=Filesystem(
            runs_base=str(home),  # run dirs at <home>/runs/<user>/<run id>, the original's layout
            artifact_roots={kind: str(home / "artifacts" / kind) for kind in ARTIFACT_KINDS},
            output_roots={kind: str(home / "artifacts" / "outputs" / kind) for kind in OUTPUT_TYPES},
        ),
        scheduler=Scheduler(kind="local"),
        # said outright, so a config written from this profile reads back the same
        dispatch=Dispatch(gc=SourceGc(enabled=False)),
    )


def dump_cluster_toml(config: ClusterConfig) -> str:
    """cluster.toml text for ``config`` (defaults left out); load_cluster_config reads it back equal."""
    import tomli_w  # only init writes TOML: not loaded by every command

    return tomli_w.dumps(_explicit(config))


def _explicit(value: Any) -> Any:
    """Builtins with defaults spelled out (a written config shows its settings), None and {} dropped."""
    if isinstance(value, msgspec.Struct):
        value = msgspec.structs.asdict(value)
    if isinstance(value, Mapping):
        items = {k: _explicit(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in items.items() if v != {}}
    return value
