"""Extra columns for run tables (``status --columns``): params, metrics and duration per run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from events.queries import load_queries
from labctl.compare import duration, flatten
from labctl.errors import InputError
from labctl.metrics import format_value, summaries
from labctl.metrics_view import metric_sources

QUERIES = load_queries("labctl", "runs.sql")

CHOICES = "params, params.KEY, args.KEY, metrics, metrics.NAME, duration"
#: ``metrics`` alone shows at most this many metric names (the first by name)
MAX_METRICS = 6


def parse_columns(spec: str) -> list[str]:
    """``params,metrics.loss,duration`` -> its items, refusing unknown ones (exit 2)."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    for item in items:
        head, dot, rest = item.partition(".")
        if item in ("params", "metrics", "duration") or (head in ("params", "args", "metrics") and dot and rest):
            continue
        raise InputError(f"--columns {item!r}: expected a comma-separated list of {CHOICES}")
    if not items:
        raise InputError(f"--columns: expected a comma-separated list of {CHOICES}")
    return items


def run_params(conn: psycopg.Connection[Any], run_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """run id -> its params (dotted keys) and args (``args.K``), as text."""
    out: dict[str, dict[str, str]] = {}
    for run_id, recipe in conn.execute(QUERIES["run_recipes"], {"ids": list(run_ids)}):
        values = flatten(recipe.get("params", {}))
        values |= {f"args.{k}": v for k, v in flatten(recipe.get("args", {})).items()}
        out[run_id] = values
    return out


def extra_columns(
    conn: psycopg.Connection[Any], rows: Sequence[tuple[str, Any, Any]], items: Sequence[str]
) -> tuple[list[str], dict[str, list[str]]]:
    """Headers and, per run id, the cells of the asked columns; ``rows`` are (run id, started, finished)."""
    run_ids = [r[0] for r in rows]
    params = run_params(conn, run_ids) if any(i.split(".")[0] in ("params", "args") for i in items) else {}
    sums: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if any(i.split(".")[0] == "metrics" for i in items):
        sources = metric_sources(conn, run_ids)
        sums = summaries(conn, list(set(sources.values())))
    headers: list[str] = []
    getters: list[Any] = []
    for item in items:
        head, _, rest = item.partition(".")
        if item == "duration":
            times = {r[0]: duration(r[1], r[2]) for r in rows}
            headers.append("DURATION")
            getters.append(lambda run_id, times=times: times.get(run_id))
        elif item == "params":
            keys = sorted({k for p in params.values() for k in p})
            if len(run_ids) > 1:  # only what tells the runs apart
                keys = [k for k in keys if len({params.get(r, {}).get(k) for r in run_ids}) > 1] or keys
            for key in keys:
                headers.append(key)
                getters.append(lambda run_id, key=key: params.get(run_id, {}).get(key))
        elif head in ("params", "args"):
            key = rest if head == "params" else item
            headers.append(key)
            getters.append(lambda run_id, key=key: params.get(run_id, {}).get(key))
        elif item == "metrics":
            names = sorted({n for s in sums.values() for n in s})[:MAX_METRICS]
            for name in names:
                headers.append(name)
                getters.append(lambda run_id, name=name: _last(sums, sources, run_id, name))
        else:
            headers.append(rest)
            getters.append(lambda run_id, name=rest: _last(sums, sources, run_id, name))
    cells = {run_id: [g(run_id) or "" for g in getters] for run_id in run_ids}
    return headers, cells


def _last(sums: dict[str, Any], sources: dict[str, str], run_id: str, name: str) -> str | None:
    summary = sums.get(sources.get(run_id, run_id), {}).get(name)
    return format_value(summary.last) if summary is not None else None
