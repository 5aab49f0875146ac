"""Reactors: named subscribers to the log that act on what happened (run by `labctl agent`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labctl.agent import Reactor
    from labctl.app import App


def default_reactors(app: App, user: str | None) -> Sequence[Reactor]:
    """The reactors of an agent acting for ``user`` (None: the service account, for every user)."""
    from labctl.reactors.advancer import Advancer
    from labctl.reactors.evald import Evald
    from labctl.reactors.slurm import SlurmReactor, slurm_available
    from labctl.reactors.snapshots import SourceGcReactor

    dispatch = app.config.dispatch
    reactors: list[Reactor] = [Advancer(app.db.url, user), Evald(app.db.url, float(dispatch.evald_interval_secs), user)]
    if app.config.scheduler.kind == "slurm" or slurm_available():
        reactors.append(SlurmReactor(app.db.url, float(dispatch.reconcile_interval_secs), app.config, user))
    if dispatch.gc is not None and dispatch.gc.enabled:
        reactors.append(SourceGcReactor(app.db.url, app.user, dispatch.gc))
    return reactors
