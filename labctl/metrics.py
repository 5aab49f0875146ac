"""Reading the metrics jobs logged: points by run, name and step, and per-metric summaries.

One query module for the CLI (``labctl metrics``, ``compare``, ``status --columns``,
``sweep show``) and the web page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import psycopg

from events.queries import load_queries

QUERIES = load_queries("labctl", "metrics.sql")

#: metric names containing one of these are better when lower ("best" is their minimum)
LOWER_IS_BETTER = ("loss", "error", "err", "perplexity", "ppl", "mse", "mae", "rmse", "wer", "cer", "time", "seconds")


class Series(msgspec.Struct, kw_only=True):
    run_id: str
    name: str
    steps: list[int]
    values: list[float | None]  # None: NaN


class Summary(msgspec.Struct, kw_only=True):
    run_id: str
    name: str
    points: int
    first_step: int
    last_step: int
    last: float | None
    min: float | None
    max: float | None
    step_of_min: int | None
    step_of_max: int | None

    @property
    def lower_is_better(self) -> bool:
        return lower_is_better(self.name)

    @property
    def best(self) -> float | None:
        return self.min if self.lower_is_better else self.max

    @property
    def best_step(self) -> int | None:
        return self.step_of_min if self.lower_is_better else self.step_of_max


def lower_is_better(name: str) -> bool:
    low = name.lower()
    return any(word in low for word in LOWER_IS_BETTER)


def metrics_of(
    conn: psycopg.Connection[Any], run_ids: Sequence[str], names: Sequence[str] | None = None
) -> list[Series]:
    """Each (run, metric) series of ``run_ids`` by step, in run order then name."""
    order = {r: i for i, r in enumerate(run_ids)}
    found: dict[tuple[str, str], Series] = {}
    rows = conn.execute(QUERIES["metrics_of"], {"run_ids": list(run_ids), "names": list(names) if names else None})
    for run_id, name, step, value in rows:
        series = found.get((run_id, name))
        if series is None:
            series = found[(run_id, name)] = Series(run_id=run_id, name=name, steps=[], values=[])
        series.steps.append(step)
        series.values.append(value)
    return sorted(found.values(), key=lambda s: (order.get(s.run_id, len(order)), s.name))


def summaries(
    conn: psycopg.Connection[Any], run_ids: Sequence[str], names: Sequence[str] | None = None
) -> dict[str, dict[str, Summary]]:
    """run id -> metric name -> its summary (last, min, max, best by the name's direction)."""
    out: dict[str, dict[str, Summary]] = {}
    rows = conn.execute(
        QUERIES["metric_summaries"], {"run_ids": list(run_ids), "names": list(names) if names else None}
    )
    for run_id, name, points, first, last_step, last, lo, hi, at_lo, at_hi in rows:
        out.setdefault(run_id, {})[name] = Summary(
            run_id=run_id,
            name=name,
            points=points,
            first_step=first,
            last_step=last_step,
            last=last,
            min=lo,
            max=hi,
            step_of_min=at_lo,
            step_of_max=at_hi,
        )
    return out


def ingested(conn: psycopg.Connection[Any], run_id: str) -> tuple[int, int, int, int]:
    """``(batches, byte offset, points, skipped lines)`` of a run's metrics file so far."""
    row = conn.execute(QUERIES["metric_file"], {"run_id": run_id}).fetchone()
    return (int(row[0]), int(row[1]), int(row[2]), int(row[3])) if row else (0, 0, 0, 0)


def format_value(value: float | None) -> str:
    if value is None:
        return "nan"
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"
