"""What every command needs: the cluster config, the database, and who is acting."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from events import EventMeta, NewEvent
from labctl import __version__
from labctl.db import Database, labctl_home, open_database
from labctl.errors import InputError, UserError
from labctl.files import ClusterConfig, find_cluster_config, load_cluster_config, local_profile
from labctl.names import BadName, check_name


def current_user() -> str:
    """The OS user (``LABCTL_USER`` overrides it, for shared service accounts and tests)."""
    user = os.environ.get("LABCTL_USER") or getpass.getuser()
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
            projections.record(conn, batch, idempotency_key=idempotency_key, meta=self.meta())

        self.db.run(work)

    @property
    def executor(self) -> str:
        return self.config.scheduler.kind

    def close(self) -> None:
        self.db.close()


def load_config(cluster: Path | None = None) -> tuple[ClusterConfig, Path | None]:
    """The cluster config in effect (``--cluster``, ``$LABCTL_CLUSTER``, XDG) or the local profile."""
    path = find_cluster_config(cluster)
    if path is None:
        return local_profile(labctl_home()), None
    if not path.is_file():
        raise UserError(f"cluster config {path} does not exist")
    return load_cluster_config(path), path


def open_app(cluster: Path | None = None) -> App:
    config, path = load_config(cluster)
    return App(
        config=config,
        config_path=path,
        home=labctl_home(),
        db=open_database(config.database.url, config.postgres),
        user=current_user(),
    )
