"""Reactors: named subscribers to the log that act on what happened (run by `labctl agent`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labctl.app import App
    from labctl.reactors.base import Reactor


def default_reactors(app: App, holder_id: str, user: str | None) -> list[Reactor]:
    """The reactors of an agent acting for ``user`` (None: the service account, for every user):
    pipelines, evals, SLURM when there is one, and the source gc when configured.

    ``holder_id`` (the agent's id) is recorded as the owner of the SLURM submissions it makes.
    """
    from labctl.reactors.advancer import Advancer
    from labctl.reactors.evald import Evald
    from labctl.reactors.slurm import SlurmReactor, slurm_available
    from labctl.reactors.snapshots import SourceGcReactor

    dispatch = app.config.dispatch
    reactors: list[Reactor] = [Advancer(app, user), Evald(app, float(dispatch.evald_interval_secs), user)]
    if app.config.scheduler.kind == "slurm" or slurm_available():
        reactors.append(SlurmReactor(app, holder_id, float(dispatch.reconcile_interval_secs), user))
    if dispatch.gc is not None and dispatch.gc.enabled:
        reactors.append(SourceGcReactor(app, dispatch.gc))
    return reactors
