"""The ``source/`` snapshot in a run dir: removed once the run has ended (the original's
``gc --terminal-snapshots`` and ``[dispatch.gc]``).

The snapshot is the working copy a job ran in, often gigabytes. Once the run
has ended nothing reads it: what it was made of stays in the log (commit,
dirty flag) and in the run's ``.lab/`` provenance files, which are kept.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from events.queries import load_queries
from projections.runs import TERMINAL_STATES

QUERIES = load_queries("labctl", "runs.sql")


def remove_terminal_sources(conn: psycopg.Connection[Any], user: str, min_age: timedelta) -> int:
    """Delete ``<run dir>/source`` of ``user``'s runs that ended at least ``min_age`` ago; how many."""
    params = {"user": user, "terminal": sorted(TERMINAL_STATES), "min_age": min_age}
    rows = conn.execute(QUERIES["ended_run_dirs"], params).fetchall()
    removed = 0
    for (run_dir,) in rows:
        source = Path(run_dir) / "source"
        if source.is_dir() and not source.is_symlink():
            shutil.rmtree(source)
            removed += 1
    return removed
