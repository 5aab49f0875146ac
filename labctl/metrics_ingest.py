"""Ingesting a run's ``.lab/metrics.jsonl`` into the log, in batches, exactly once.

Progress is the ``metrics-<run id>`` stream: each MetricsLogged names the byte
range it read, so an ingester (agent, SLURM reconcile, ``finish``) resumes at
the last ``end`` after a restart, and two ingesters racing on one run conflict
on the stream version instead of recording a line twice. While a run is live
only complete lines are read; at its end a last line without a newline counts too.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

import orjson
import psycopg

import projections
from events import ConcurrencyError, EventMeta, NewEvent
from events.types import MetricPoint, MetricsLogged
from labctl.metrics import ingested
from labctl.metrics_file import STEP_KEY, TIME_KEY, metrics_path

log = logging.getLogger(__name__)

#: points per MetricsLogged event, and bytes read per transaction
BATCH_POINTS = 2000
READ_BYTES = 32 << 20
_NON_FINITE = frozenset({"nan", "inf", "-inf"})


def stream_of(run_id: str) -> str:
    return f"metrics-{run_id}"


def parse_line(line: bytes) -> MetricPoint | None:
    """One line as a point, or None when it is not ``{"step": int, name: number, ...}``."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    step = record.pop(STEP_KEY, None)
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if isinstance(step, bool) or not isinstance(step, int):
        return None
    at = record.pop(TIME_KEY, None)
    values: dict[str, float | str] = {}
    for name, value in record.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            values[name] = float(value) if math.isfinite(value) else _spelled(float(value))
        elif isinstance(value, str) and value.lower() in _NON_FINITE:
            values[name] = value.lower()
    if not values:
        return None
    return MetricPoint(step=step, values=values, at=float(at) if isinstance(at, int | float) else None)


def _spelled(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def batches_of(run_id: str, data: bytes, offset: int, *, final: bool) -> tuple[list[MetricsLogged], int]:
    """``data`` (the file from ``offset``) cut into events of at most BATCH_POINTS points; returns them and
    the offset after the last byte consumed (a live run's unfinished last line is left for later)."""
    usable = len(data) if final else data.rfind(b"\n") + 1
    out: list[MetricsLogged] = []
    points: list[MetricPoint] = []
    skipped = 0
    start = pos = 0
    while pos < usable:
        nl = data.find(b"\n", pos, usable)
        end = usable if nl < 0 else nl + 1
        line = data[pos:end].strip()
        if line:
            point = parse_line(line)
            if point is None:
                skipped += 1
            else:
                points.append(point)
        pos = end
        if len(points) >= BATCH_POINTS:
            out.append(
                MetricsLogged(run_id=run_id, offset=offset + start, end=offset + pos, points=points, skipped=skipped)
            )
            points, skipped, start = [], 0, pos
    if pos > start:
        out.append(
            MetricsLogged(run_id=run_id, offset=offset + start, end=offset + pos, points=points, skipped=skipped)
        )
    return out, offset + pos


def ingest(
    run_in_tx: Callable[[Callable[[psycopg.Connection[Any]], int]], int],
    run_id: str,
    run_dir: str | os.PathLike[str],
    meta: EventMeta,
    *,
    final: bool = False,
) -> int:
    """Record the lines appended to the run's metrics file since the last ingest; returns the points recorded.

    ``run_in_tx`` runs a function in one transaction (``Database.run``), retrying transient failures.
    """
    path = metrics_path(run_dir)
    total = 0
    for _ in range(1000):  # READ_BYTES at a time; a few conflicts with another ingester
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return total

        def attempt(conn: psycopg.Connection[Any], size: int = size) -> int:
            version, offset, _points, _skipped = ingested(conn, run_id)
            if size < offset:
                log.warning("run %s: %s shrank below what was ingested (%d < %d); ignored", run_id, path, size, offset)
                return -1
            if size == offset:
                return -1
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(min(size - offset, READ_BYTES))
            whole = final and offset + len(data) == size
            found, _end = batches_of(run_id, data, offset, final=whole)
            if not found:
                return -1  # only an unfinished line so far
            stream = stream_of(run_id)
            batch = [NewEvent(stream, e, version if i == 0 else None) for i, e in enumerate(found)]
            projections.record(conn, batch, idempotency_key=f"{stream}-{found[0].offset}-{found[-1].end}", meta=meta)
            return sum(len(e.points) for e in found)

        try:
            n = run_in_tx(attempt)
        except ConcurrencyError:
            continue  # another ingester recorded a batch first: continue after it
        if n < 0:
            return total
        total += n
    return total


def ingest_quietly(
    run_in_tx: Callable[[Callable[[psycopg.Connection[Any]], int]], int],
    run_id: str,
    run_dir: str | os.PathLike[str],
    meta: EventMeta,
    *,
    final: bool = False,
) -> int:
    """``ingest``, logging instead of raising: a bad metrics file must never keep a run's end from being recorded."""
    try:
        return ingest(run_in_tx, run_id, run_dir, meta, final=final)
    except (OSError, ValueError) as exc:
        log.warning("run %s: metrics not ingested: %s", run_id, exc)
        return 0


class LiveFiles:
    """Which runs' metrics files grew since they were last ingested (a stat per run, no query)."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}

    def grown(self, run_id: str, run_dir: str) -> bool:
        try:
            size = metrics_path(run_dir).stat().st_size
        except OSError:
            return False
        if self.sizes.get(run_id) == size:
            return False
        self.sizes[run_id] = size
        return True

    def forget(self, run_id: str) -> None:
        self.sizes.pop(run_id, None)
