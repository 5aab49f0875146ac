"""Reactors: named subscribers to the log that act on what happened (run by `labctl agent`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labctl.agent import Reactor
    from labctl.app import App


def default_reactors(app: App) -> Sequence[Reactor]:
    from labctl.reactors.advancer import Advancer
    from labctl.reactors.evald import Evald
    from labctl.reactors.slurm import SlurmReactor, slurm_available

    reactors: list[Reactor] = [Advancer(app.db.url), Evald(app.db.url, float(app.config.dispatch.evald_interval_secs))]
    if app.config.scheduler.kind == "slurm" or slurm_available():
        reactors.append(SlurmReactor(app.db.url, float(app.config.dispatch.reconcile_interval_secs)))
    return reactors
