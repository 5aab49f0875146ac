"""Reading sweeps: each point's parameter, state and metrics (logged, else from its evals)."""

from __future__ import annotations

from typing import Any

import msgspec
import psycopg

from events.queries import load_queries, row_as
from labctl.eval_table import split_result
from labctl.lookup import resolve_id
from labctl.metrics import format_value, lower_is_better, summaries
from labctl.metrics_view import metric_sources
from labctl.table import format_table

QUERIES = load_queries("labctl.pipelines", "pipelines.sql")
EVAL_QUERIES = load_queries("labctl", "evals.sql")


class SweepInfo(msgspec.Struct, frozen=True):
    """A sweep as ``sweep show`` heads it."""

    id: str
    name: str
    arg: str
    start_index: int
    end_index: int
    throttle: int | None
    status: str
    aggregate_run_id: str | None


def resolve_sweep(conn: psycopg.Connection[Any], ref: str) -> str:
    return resolve_id(conn, "sweeps", "sweep", ref)


def sweep_rows(
    conn: psycopg.Connection[Any], ref: str, metric: str | None = None
) -> tuple[SweepInfo, list[str], list[tuple[Any, ...]]]:
    """The sweep, its metric headers, and per point (index, run, status, exit, *metric cells).

    With ``metric``: its final and best value. Without: the final value of each metric the
    points logged (``labctl.log``), else of each metric their evals recorded (params left out).
    """
    sweep_id = resolve_sweep(conn, ref)
    info = row_as(conn, SweepInfo, QUERIES["sweep"], {"id": sweep_id})
    assert info is not None
    rows = conn.execute(QUERIES["sweep_points"], {"id": sweep_id}).fetchall()
    run_ids = [r[1] for r in rows]
    sources = metric_sources(conn, run_ids)
    logged = summaries(conn, list(set(sources.values())), [metric] if metric else None)
    evals = {r[1]: _eval_series(conn, r[1], r[4]) for r in rows}
    if metric:
        best_word = "min" if lower_is_better(metric) else "max"
        headers = [f"{metric} (final)", f"{metric} (best, {best_word})"]
    else:
        names = sorted({n for s in logged.values() for n in s}) or sorted({n for e in evals.values() for n in e})
        headers = names[:MAX_COLUMNS]
    points = []
    for index, run_id, status, exit_code, _recipe in rows:
        mine = logged.get(sources[run_id], {})
        cells: list[str] = []
        if metric:
            summary = mine.get(metric)
            if summary is not None:
                cells = [format_value(summary.last), f"{format_value(summary.best)} @ {summary.best_step}"]
            else:
                cells = _eval_final_and_best(evals[run_id].get(metric, []), lower_is_better(metric))
        else:
            for name in headers:
                summary = mine.get(name)
                series = evals[run_id].get(name, [])
                cells.append(format_value(summary.last) if summary else (format_value(series[-1][1]) if series else ""))
        points.append((index, run_id, status, exit_code, *cells))
    return info, headers, points


#: metric columns ``sweep show`` adds without --metric
MAX_COLUMNS = 4


def _eval_series(
    conn: psycopg.Connection[Any], run_id: str, recipe: dict[str, Any]
) -> dict[str, list[tuple[int, float]]]:
    """The run's checkpoints' eval metrics by step (params left out), else its own eval_result output."""
    found = conn.execute(EVAL_QUERIES["eval_series"], {"run_id": run_id}).fetchall()
    if not found:
        own = conn.execute(EVAL_QUERIES["eval_result"], {"run_id": run_id}).fetchone()
        found = [(None, own[0])] if own and isinstance(own[0], dict) else []
    series: dict[str, list[tuple[int, float]]] = {}
    for step, result in found:
        _params, metrics = split_result(result, recipe)
        for name, value in metrics.items():
            series.setdefault(name, []).append((step or 0, value))
    return series


def _eval_final_and_best(series: list[tuple[int, float]], lower: bool) -> list[str]:
    if not series:
        return ["", ""]
    best = (min if lower else max)(series, key=lambda p: p[1])
    return [format_value(series[-1][1]), f"{format_value(best[1])} @ {best[0]}"]


def render_sweep(info: SweepInfo, headers: list[str], points: list[tuple[Any, ...]]) -> str:
    head = f"{info.id}  {info.name}  {info.status}  {info.arg}={info.start_index}..{info.end_index}"
    head += f"  throttle {info.throttle}" if info.throttle else ""
    table = format_table([info.arg.upper(), "RUN", "STATUS", "EXIT", *headers], points)
    tail = f"\naggregate: {info.aggregate_run_id}" if info.aggregate_run_id else ""
    return f"{head}\n{table}{tail}"
