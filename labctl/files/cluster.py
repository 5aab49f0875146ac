"""cluster.toml: where runs, artifacts and repos live, which scheduler, which database."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from labctl.files.decode import beside, convert, dotted, line_of, read_toml
from labctl.files.errors import FileFormatError

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


class Scheduler(_Section, frozen=True):
    kind: Literal["slurm", "local"] = "local"


class SlurmSettings(_Section, frozen=True):
    qos: str | None = None
    gres_gpu_syntax: str = "gpu:{n}"  # how `gpus = n` becomes `--gres=...`
    partition: str | None = None
    account: str | None = None


class Dispatch(_Section, frozen=True):
    reconcile_interval_secs: int = 30
    evald_interval_secs: int = 60
    policies_dir: str | None = None


class Throttle(_Section, frozen=True):
    """Limits the agent's throttle holds queued runs back for; None = unlimited."""

    max_running_per_user: int | None = None
    max_running: int | None = None
    max_queued_per_user: int | None = None


class Database(_Section, frozen=True):
    url: str | None = None  # None: LABCTL_DATABASE_URL, else the embedded Postgres


class Local(_Section, frozen=True):
    slots: int | None = None  # concurrent local runs; None = one per CPU


class ClusterConfig(_Section, frozen=True):
    name: str
    filesystem: Filesystem
    repos: dict[str, str] = {}  # logical repo name -> path of a git checkout
    scheduler: Scheduler = msgspec.field(default_factory=Scheduler)
    slurm: SlurmSettings = msgspec.field(default_factory=SlurmSettings)
    dispatch: Dispatch = msgspec.field(default_factory=Dispatch)
    env: dict[str, str] = {}  # set for every run; a recipe's [env] wins
    throttle: Throttle = msgspec.field(default_factory=Throttle)
    database: Database = msgspec.field(default_factory=Database)
    local: Local = msgspec.field(default_factory=Local)


def find_cluster_config(explicit: Path | None = None) -> Path | None:
    """The cluster.toml to use: ``--cluster``, ``$LABCTL_CLUSTER``,
    ``$XDG_CONFIG_HOME/labctl/cluster.toml``, ``~/.config/labctl/cluster.toml``.

    The first two are returned even when missing (loading then says so);
    None means "use the built-in local profile".
    """
    if explicit is not None:
        return explicit
    if env_path := os.environ.get("LABCTL_CLUSTER"):
        return Path(env_path).expanduser()
    candidates = []
    if xdg := os.environ.get("XDG_CONFIG_HOME"):
        candidates.append(Path(xdg) / "labctl" / "cluster.toml")
    candidates.append(Path.home() / ".config" / "labctl" / "cluster.toml")
    return next((c for c in candidates if c.is_file()), None)


def load_cluster_config(path: str | Path) -> ClusterConfig:
    """Read and check a cluster.toml; paths come back absolute (``~`` expanded,
    relative ones taken from the file's directory). Raises FileFormatError."""
    path = Path(path)
    raw, text = read_toml(path)
    config = convert(raw, ClusterConfig, path, text)
    _validate(config, path, text)
    return _absolute_paths(config, path)


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
    if config.local.slots is not None and config.local.slots < 1:
        fail(["local", "slots"], "must be 1 or more")
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
            runs_base=str(home / "runs"),
            artifact_roots={kind: str(home / "artifacts" / kind) for kind in ARTIFACT_KINDS},
            output_roots={kind: str(home / "artifacts" / "outputs" / kind) for kind in OUTPUT_TYPES},
        ),
        scheduler=Scheduler(kind="local"),
    )


def dump_cluster_toml(config: ClusterConfig) -> str:
    """cluster.toml text for ``config`` (defaults left out); load_cluster_config reads it back equal."""
    lines: list[str] = []
    _emit_table(lines, [], _explicit(config))
    return "\n".join(lines).strip() + "\n"


def _explicit(value: Any) -> Any:
    """Builtins with defaults spelled out (a written config shows its settings), None and {} dropped."""
    if isinstance(value, msgspec.Struct):
        value = msgspec.structs.asdict(value)
    if isinstance(value, Mapping):
        items = {k: _explicit(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in items.items() if v != {}}
    return value


def _emit_table(lines: list[str], prefix: list[str], table: Mapping[str, Any]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping) and v is not None}
    tables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    if prefix and scalars:
        lines.append("")
        lines.append("[" + ".".join(_key(p) for p in prefix) + "]")
    for key, value in scalars.items():
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in tables.items():
        _emit_table(lines, [*prefix, key], value)


def _key(key: str) -> str:
    return key if re.match(r"^[A-Za-z0-9_-]+$", key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    # TOML basic strings accept JSON's escapes
    return json.dumps(str(value), ensure_ascii=False)
