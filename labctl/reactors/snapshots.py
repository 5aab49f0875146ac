"""The original labctl's ``[dispatch.gc]``: now and then, delete the ``source/`` snapshot of runs that ended.

No checkpoint: each pass lists the ended runs and deletes the snapshots still
there, so a pass cut short (even halfway through one snapshot) is finished by
the next and nothing is recorded in the log.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from labctl.files import SourceGc
from labctl.reactors.base import Leadership
from labctl.snapshots import remove_terminal_sources

if TYPE_CHECKING:
    from labctl.app import App

log = logging.getLogger(__name__)


class SourceGcReactor:
    name = "source-gc"

    def __init__(self, app: App, settings: SourceGc) -> None:
        # one agent per user does it: each user deletes only what is theirs
        self.app = app
        self.leadership = Leadership(app.db.url, f"{self.name}-{app.user}")
        self.user = app.user
        self.settings = settings
        self.next_pass = time.monotonic() + settings.interval_secs  # as the original: first pass after one interval

    def step(self) -> bool:
        now = time.monotonic()
        if now < self.next_pass or not self.leadership.held():
            return False
        self.next_pass = now + self.settings.interval_secs
        removed = remove_terminal_sources(
            self.app.db.conn, self.user, timedelta(seconds=self.settings.min_terminal_age_secs)
        )
        if removed:
            log.info("source gc: removed %d source snapshot(s) of ended runs", removed)
        return False  # nothing in the log changed

    def close(self) -> None:
        self.leadership.release()
