"""Reading pipelines: resolve an id, list them, show one as a DAG with each stage's state."""

from __future__ import annotations

from typing import Any

import psycopg

from labctl.errors import UserError
from labctl.lookup import resolve_id
from labctl.pipelines.advance import load, stage_state
from projections.runs import TERMINAL_STATES


def resolve_pipeline(conn: psycopg.Connection[Any], ref: str) -> str:
    return resolve_id(conn, "pipelines", "pipeline", ref)


def unfinished_runs(conn: psycopg.Connection[Any], pipeline_id: str) -> list[str]:
    terminal = list(TERMINAL_STATES)
    rows = conn.execute(
        "SELECT id FROM runs WHERE pipeline_id = %s AND NOT (status = ANY(%s)) ORDER BY created_at",
        (pipeline_id, terminal),
    ).fetchall()
    return [r[0] for r in rows]


def pipeline_view(conn: psycopg.Connection[Any], pipeline_id: str) -> dict[str, Any]:
    """The pipeline with each stage's parents, state and runs (what ``pipeline-show`` prints)."""
    pipeline, stages, runs = load(conn, pipeline_id)
    if pipeline is None:
        raise UserError(f"no pipeline {pipeline_id!r}")
    info = conn.execute(
        "SELECT name, user_name, status, reason, created_at, finished_at, file_path, from_run "
        "FROM pipelines WHERE id = %s",
        (pipeline_id,),
    ).fetchone()
    assert info is not None
    view: dict[str, Any] = {
        "id": pipeline_id,
        "name": info[0],
        "user": info[1],
        "status": info[2],
        "reason": info[3],
        "created_at": info[4],
        "finished_at": info[5],
        "file": info[6],
        "from": info[7],
        "stages": [],
    }
    for st in stages:
        state, cause = stage_state(st.run_ids, runs)
        statuses = [runs[r].status for r in st.run_ids if r in runs]
        if state == "waiting" and any(s not in ("created",) for s in statuses):
            state = "running"
        elif state == "waiting":
            state = "created"
        view["stages"].append(
            {
                "name": st.name,
                "parents": list(st.parents),
                "state": state,
                "cause": cause,
                "runs": [{"id": r, "status": runs[r].status if r in runs else None} for r in st.run_ids],
            }
        )
    return view


def render_pipeline(view: dict[str, Any]) -> str:
    """The DAG as indented text: each stage under its first parent, with state and runs."""
    lines = [f"{view['id']}  {view['name']}  {view['status']}" + (f"  ({view['reason']})" if view["reason"] else "")]
    children: dict[str | None, list[dict[str, Any]]] = {}
    for stage in view["stages"]:
        children.setdefault(stage["parents"][0] if stage["parents"] else None, []).append(stage)

    def walk(parent: str | None, depth: int) -> None:
        for stage in children.get(parent, []):
            counts: dict[str, int] = {}
            for r in stage["runs"]:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            runs = (
                stage["runs"][0]["id"]
                if len(stage["runs"]) == 1
                else ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            )
            also = [p for p in stage["parents"][1:]]
            after = f"  (also after {', '.join(also)})" if also else ""
            lines.append(f"{'  ' * depth}└─ {stage['name']}: {stage['state']}  [{runs}]{after}")
            walk(stage["name"], depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def pipelines_list(conn: psycopg.Connection[Any], user: str | None, limit: int = 50) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, name, status, user_name, created_at, finished_at FROM pipelines "
        "WHERE %(user)s::text IS NULL OR user_name = %(user)s ORDER BY created_at DESC LIMIT %(limit)s",
        {"user": user, "limit": limit},
    ).fetchall()
