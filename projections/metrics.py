"""Metrics jobs logged: one row per (run, metric name, step), and how far each run's file was read."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import msgspec

from events import StoredEvent
from events.queries import load_queries
from events.types import MetricsLogged
from projections.base import Projection, State, Table


class MetricRow(msgspec.Struct, kw_only=True):
    run_id: str
    name: str
    step: int
    value: float | None  # NULL: not a number (NaN); infinities are kept
    logged_at: datetime


class MetricFileRow(msgspec.Struct, kw_only=True):
    run_id: str
    batches: int  # = the version of stream metrics-<run id>
    byte_offset: int  # where the next batch starts
    points: int
    skipped: int
    updated_at: datetime


# A rebuild has the server compute the points (most of a long log's rows) from the log: see queries.sql.
METRICS = Table(
    "metrics", MetricRow, key=("run_id", "name", "step"), rebuild_query=load_queries("projections")["metrics_rebuild"]
)
# And how far each run's file was read (tests/test_server_rebuild.py compares it with the handler's).
METRIC_FILES = Table(
    "metric_files", MetricFileRow, key=("run_id",), rebuild_query=load_queries("projections")["metric_files_rebuild"]
)

projection = Projection("metrics", [METRICS, METRIC_FILES])

_NON_FINITE = {"nan": None, "inf": math.inf, "-inf": -math.inf}


def metric_value(raw: float | str) -> float | None:
    """A logged value as stored: a float, an infinity, or None for NaN (NaN != NaN would break audits)."""
    if isinstance(raw, str):
        return _NON_FINITE.get(raw)
    return None if math.isnan(raw) else float(raw)


@projection.on(MetricsLogged)
def _logged(state: State, e: StoredEvent) -> None:
    d = e.data
    assert isinstance(d, MetricsLogged)
    rows = state.rows(METRICS)
    if rows.collects:  # (a rebuild has the server compute them: see METRICS)
        for point in d.points:
            at = datetime.fromtimestamp(point.at, UTC) if point.at is not None else e.recorded_at
            for name, raw in point.values.items():
                value = metric_value(raw)
                rows.put(MetricRow(run_id=d.run_id, name=name, step=point.step, value=value, logged_at=at))
    files = state.rows(METRIC_FILES)
    row = files.get(d.run_id)
    files.put(
        MetricFileRow(
            run_id=d.run_id,
            batches=e.version,
            byte_offset=d.end,
            points=(row.points if row else 0) + len(d.points),
            skipped=(row.skipped if row else 0) + d.skipped,
            updated_at=e.recorded_at,
        )
    )
