"""Runs side by side: params, resources, inputs, duration and final/best metrics, differences marked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import psycopg

from events.queries import load_queries
from labctl.metrics import format_value, summaries
from labctl.metrics_view import metric_sources
from labctl.table import format_table

QUERIES = load_queries("labctl", "runs.sql")


class CompareRow(msgspec.Struct, kw_only=True):
    section: str  # params | resources | inputs | run | metrics
    key: str
    values: list[str | None]  # one per run; None: the run has no such key

    @property
    def differs(self) -> bool:
        return len(set(self.values)) > 1


class Comparison(msgspec.Struct, kw_only=True):
    run_ids: list[str]
    rows: list[CompareRow]


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested tables as dotted keys with their values as text."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list) and value and any(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out |= flatten(v, f"{prefix}.{i}")
        return out
    if value is None or value == [] or value == {}:
        return {}
    return {prefix: str(value) if not isinstance(value, list) else ",".join(map(str, value))}


def duration(started: Any, finished: Any) -> str | None:
    if started is None or finished is None:
        return None
    seconds = (finished - started).total_seconds()
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def compare_runs(
    conn: psycopg.Connection[Any], run_ids: Sequence[str], metrics: Sequence[str] | None = None
) -> Comparison:
    """Every key any of the runs has, per section, with each run's value."""
    found = {r[0]: r for r in conn.execute(QUERIES["runs_compared"], {"ids": list(run_ids)})}
    inputs: dict[str, dict[str, str]] = {r: {} for r in run_ids}
    for run_id, role, typ, path, artifact, alias, digest in conn.execute(
        QUERIES["inputs_compared"], {"ids": list(run_ids)}
    ):
        ident = alias or artifact or path
        inputs[run_id][role] = f"{ident} ({digest[:12]})" if digest else f"{ident} ({typ})"
    per_run: list[dict[tuple[str, str], str]] = []
    sources = metric_sources(conn, run_ids)
    sums = summaries(conn, list(set(sources.values())), metrics)
    for run_id in run_ids:
        row = found.get(run_id)
        values: dict[tuple[str, str], str] = {}
        if row is not None:
            _, name, status, recipe, started, finished, producer, _index = row
            values[("run", "name")] = name
            values[("run", "status")] = status
            took = duration(started, finished)
            if took:
                values[("run", "duration")] = took
            if producer:
                values[("run", "outputs of")] = producer
            for k, v in flatten(recipe.get("params", {})).items():
                values[("params", k)] = v
            for k, v in flatten(recipe.get("args", {})).items():
                values[("params", f"args.{k}")] = v
            for k, v in flatten(recipe.get("resources", {})).items():
                values[("resources", k)] = v
        for role, text in inputs[run_id].items():
            values[("inputs", role)] = text
        for metric, summary in sums.get(sources[run_id], {}).items():
            values[("metrics", f"{metric} (final)")] = format_value(summary.last)
            direction = "min" if summary.lower_is_better else "max"
            best = format_value(summary.best)
            values[("metrics", f"{metric} (best, {direction})")] = f"{best} @ step {summary.best_step}"
        per_run.append(values)
    order = {"run": 0, "params": 1, "resources": 2, "inputs": 3, "metrics": 4}
    keys = sorted({k for values in per_run for k in values}, key=lambda k: (order[k[0]], k[1]))
    rows = [CompareRow(section=s, key=k, values=[v.get((s, k)) for v in per_run]) for s, k in keys]
    return Comparison(run_ids=list(run_ids), rows=rows)


def render_comparison(comparison: Comparison, labels: dict[str, str], *, only_differences: bool = False) -> str:
    """A table: ``*`` marks a key whose values differ between the runs."""
    rows = [r for r in comparison.rows if r.differs or not only_differences]
    table = [["*" if r.differs else "", r.section, r.key, *r.values] for r in rows]
    headers = ["", "SECTION", "KEY", *(labels.get(r, r) for r in comparison.run_ids)]
    differing = sum(r.differs for r in comparison.rows)
    return format_table(headers, table) + f"\n{differing} of {len(comparison.rows)} keys differ (marked *)"
