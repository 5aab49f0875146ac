"""What every command needs: the cluster config, the database, and who is acting."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from events import EventMeta, NewEvent
from labctl import __version__
from labctl.db import Database, open_database
from labctl.errors import InputError, UserError
from labctl.files import ClusterConfig, find_cluster_config, load_cluster_config, local_profile
from labctl.names import BadName, check_name
from labctl.settings import Settings, settings_from_env

if TYPE_CHECKING:
    from labctl.executors.slurm import SlurmExecutor


def current_user(settings: Settings | None = None) -> str:
    """The OS user (``LABCTL_USER`` overrides it, for shared service accounts and tests)."""
    user = (settings or settings_from_env()).user or getpass.getuser()
    check_user_name(user)
    return user


def check_user_name(user: str) -> None:
    try:
        check_name("user name", user)
    except BadName as exc:
        raise InputError(str(exc)) from None


@dataclass
class App:
    config: ClusterConfig
    config_path: Path | None
    home: Path
    db: Database
    user: str
    #: the LABCTL_* settings, read once at start-up
    settings: Settings = field(default_factory=settings_from_env)

    def meta(self, *, causation_id: str | None = None, correlation_id: str | None = None) -> EventMeta:
        return EventMeta(
            actor=self.user,
            host=socket.gethostname(),
            labctl_version=__version__,
            causation_id=causation_id,
            correlation_id=correlation_id,
        )

    def record(self, batch: Sequence[NewEvent], idempotency_key: str) -> None:
        """Append ``batch`` and project it in one transaction, retrying transient database failures
        (the idempotency key makes a retry after an unanswered commit harmless)."""
        import projections

        def work(conn: psycopg.Connection[Any]) -> None:
            projections.record(conn, batch, idempotency_key=idempotency_key, meta=self.meta(), savepoint=False)

        self.db.run(work)

    def slurm_executor(self, **tuning: Any) -> SlurmExecutor:
        """The SLURM executor for this cluster: its ``[scheduler]`` command paths, or ``$LABCTL_SLURM_BIN_DIR``."""
        from labctl.executors.slurm import SlurmExecutor

        return SlurmExecutor(bin_dir=self.settings.slurm_bin_dir, scheduler=self.config.scheduler, **tuning)

    @property
    def executor(self) -> str:
        return self.config.scheduler.kind

    def close(self) -> None:
        self.db.close()


def load_config(cluster: Path | None = None, settings: Settings | None = None) -> tuple[ClusterConfig, Path | None]:
    """The cluster config in effect (``--cluster``, ``$LABCTL_CLUSTER``, XDG) or the local profile."""
    settings = settings or settings_from_env()
    path = find_cluster_config(cluster or settings.cluster)
    if path is None:
        return local_profile(settings.home), None
    if not path.is_file():
        raise UserError(f"cluster config {path} does not exist")
    return load_cluster_config(path), path


def open_app(cluster: Path | None = None, settings: Settings | None = None) -> App:
    """What one command needs: the settings (read from the environment once, here), the cluster config,
    the database and the acting user."""
    settings = settings or settings_from_env()
    config, path = load_config(cluster, settings)
    return App(
        config=config,
        config_path=path,
        home=settings.home,
        db=open_database(config.database.url, config.postgres, settings=settings),
        user=current_user(settings),
        settings=settings,
    )
