"""What a run promised when it was submitted (its latest ``RunSubmitted``), read from its stream."""

from __future__ import annotations

from typing import Any

import psycopg

import events
from events.types import RunSubmitted


def submission_of(conn: psycopg.Connection[Any], run_id: str) -> RunSubmitted | None:
    """The run's latest RunSubmitted (what it promised to write)."""
    found = None
    for e in events.read_stream(conn, f"run-{run_id}"):
        if isinstance(e.data, RunSubmitted):
            found = e.data
    return found
