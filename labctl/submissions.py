"""What a run promised when it was submitted (its latest ``RunSubmitted``), read from its stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

import events
from events.codec import decode_event
from events.queries import load_queries
from events.types import RunSubmitted

QUERIES = load_queries("labctl", "queries.sql")


def submission_of(conn: psycopg.Connection[Any], run_id: str) -> RunSubmitted | None:
    """The run's latest RunSubmitted (what it promised to write)."""
    found = None
    for e in events.read_stream(conn, f"run-{run_id}"):
        if isinstance(e.data, RunSubmitted):
            found = e.data
    return found


def submissions_of(conn: psycopg.Connection[Any], run_ids: Sequence[str]) -> dict[str, RunSubmitted]:
    """``submission_of`` for several runs in one query (the runs an agent starts or ends in one tick)."""
    rows = conn.execute(QUERIES["submissions"], {"streams": [f"run-{r}" for r in run_ids]}).fetchall()
    found = {run_id: decode_event("RunSubmitted", data) for run_id, data in rows}
    return {run_id: sub for run_id, sub in found.items() if isinstance(sub, RunSubmitted)}
