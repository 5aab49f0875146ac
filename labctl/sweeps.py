"""Reading sweeps: each point's parameter, state and key metric."""

from __future__ import annotations

from typing import Any

import psycopg

from labctl.lookup import resolve_id
from labctl.table import format_table


def resolve_sweep(conn: psycopg.Connection[Any], ref: str) -> str:
    return resolve_id(conn, "sweeps", "sweep", ref)


def _metrics_of(conn: psycopg.Connection[Any], run_id: str) -> dict[str, Any] | None:
    """The latest eval of the run's checkpoints, else its own eval_result output."""
    row = conn.execute(
        "SELECT e.metrics FROM evals e JOIN artifacts a ON a.id = e.checkpoint_artifact_id "
        "WHERE a.producer_run_id = %s AND e.metrics IS NOT NULL ORDER BY e.step DESC NULLS LAST LIMIT 1",
        (run_id,),
    ).fetchone()
    if row:
        return dict(row[0])
    row = conn.execute(
        "SELECT a.metadata -> 'result' FROM artifacts a JOIN run_outputs o ON o.artifact_id = a.id "
        "WHERE o.run_id = %s AND a.kind = 'eval_result' LIMIT 1",
        (run_id,),
    ).fetchone()
    return dict(row[0]) if row and isinstance(row[0], dict) else None


def key_metric(metrics: dict[str, Any] | None) -> tuple[str, Any] | None:
    if not metrics:
        return None
    for name, value in metrics.items():
        if name != "step" and isinstance(value, int | float) and not isinstance(value, bool):
            return name, value
    return None


def sweep_rows(conn: psycopg.Connection[Any], ref: str) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    sweep_id = resolve_sweep(conn, ref)
    info = conn.execute(
        "SELECT id, name, arg, start_index, end_index, throttle, status, aggregate_run_id FROM sweeps WHERE id = %s",
        (sweep_id,),
    ).fetchone()
    assert info is not None
    rows = conn.execute(
        "SELECT sweep_index, id, status, exit_code FROM runs WHERE sweep_id = %s ORDER BY sweep_index", (sweep_id,)
    ).fetchall()
    points = []
    for index, run_id, status, exit_code in rows:
        metric = key_metric(_metrics_of(conn, run_id))
        points.append((index, run_id, status, exit_code, f"{metric[0]}={metric[1]:.4g}" if metric else "-"))
    return info, points


def render_sweep(info: tuple[Any, ...], points: list[tuple[Any, ...]]) -> str:
    sweep_id, name, arg, start, end, throttle, status, aggregate = info
    head = f"{sweep_id}  {name}  {status}  {arg}={start}..{end}" + (f"  throttle {throttle}" if throttle else "")
    table = format_table([arg.upper(), "RUN", "STATUS", "EXIT", "KEY METRIC"], points)
    tail = f"\naggregate: {aggregate}" if aggregate else ""
    return f"{head}\n{table}{tail}"
