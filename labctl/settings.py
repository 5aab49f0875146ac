"""labctl's settings from the environment, read once at start-up into one typed value.

Every ``LABCTL_*`` variable labctl itself obeys is read here and nowhere else;
the App carries the result. (Variables labctl *sets* for jobs, like
``LABCTL_RUN_ID``, are in ``jobenv``.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from labctl.errors import InputError


@dataclass(frozen=True)
class Settings:
    #: ``LABCTL_HOME``: the local profile's embedded Postgres, runs and artifacts
    home: Path
    #: ``LABCTL_DATABASE_URL``: this Postgres wins over the cluster config's and the embedded one
    database_url: str | None = None
    #: ``LABCTL_CLUSTER``: the cluster.toml to use when ``--cluster`` is not given
    cluster: Path | None = None
    #: ``LABCTL_USER``: act as this user instead of the OS user
    user: str | None = None
    #: ``LABCTL_DB_RETRY_SECONDS``: how long transient database failures are retried
    db_retry_seconds: float = 10.0
    #: ``LABCTL_AGENT_STALE_SECONDS``: heartbeat age after which an agent's runs end ``node_fail``
    agent_stale_seconds: float = 10.0
    #: ``LABCTL_AGENT_AHEAD_SECONDS``: an agent claims runs ahead of its free slots while its last jobs ran
    #: shorter than this on average (0: never)
    agent_ahead_seconds: float = 10.0
    #: ``LABCTL_SLURM_BIN_DIR``: where sbatch/sacct/squeue/scancel/sinfo are taken from
    slurm_bin_dir: str | None = None
    #: ``LABCTL_SLURM_RECOVERY_GRACE``: seconds before an interrupted SLURM submission is looked up by name
    slurm_recovery_grace: float = 15.0
    #: ``LABCTL_BIN``: the labctl a job calls back when none is installed beside this Python or on PATH
    labctl_bin: str | None = None


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise InputError(f"{name}={raw!r}: expected a number of seconds") from None


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    """The settings in ``env`` (default: this process's environment); unset or empty means the default."""
    env = os.environ if env is None else env
    return Settings(
        home=Path(env.get("LABCTL_HOME") or Path.home() / ".labctl").expanduser(),
        database_url=env.get("LABCTL_DATABASE_URL") or None,
        cluster=Path(env["LABCTL_CLUSTER"]).expanduser() if env.get("LABCTL_CLUSTER") else None,
        user=env.get("LABCTL_USER") or None,
        db_retry_seconds=_seconds(env, "LABCTL_DB_RETRY_SECONDS", 10.0),
        agent_stale_seconds=_seconds(env, "LABCTL_AGENT_STALE_SECONDS", 10.0),
        agent_ahead_seconds=_seconds(env, "LABCTL_AGENT_AHEAD_SECONDS", 10.0),
        slurm_bin_dir=env.get("LABCTL_SLURM_BIN_DIR") or None,
        slurm_recovery_grace=_seconds(env, "LABCTL_SLURM_RECOVERY_GRACE", 15.0),
        labctl_bin=env.get("LABCTL_BIN") or None,
    )
