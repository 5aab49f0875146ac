"""Reading pipelines: resolve an id, list them, show one as a DAG with each stage's state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import psycopg

from events.queries import rows_as
from labctl.errors import UserError
from labctl.lookup import resolve_id
from labctl.pipelines.advance import QUERIES, load, stage_state
from labctl.pipelines.plan import PipelineSubmitted
from labctl.runs import shown_job_id
from projections.runs import TERMINAL_STATES


def resolve_pipeline(conn: psycopg.Connection[Any], ref: str) -> str:
    return resolve_id(conn, "pipelines", "pipeline", ref)


def unfinished_runs(conn: psycopg.Connection[Any], pipeline_id: str) -> list[str]:
    rows = conn.execute(QUERIES["unfinished_runs"], {"id": pipeline_id, "terminal": sorted(TERMINAL_STATES)}).fetchall()
    return [r[0] for r in rows]


def pipeline_view(conn: psycopg.Connection[Any], pipeline_id: str) -> dict[str, Any]:
    """The pipeline with each stage's parents, state and runs (what ``pipeline-show`` prints)."""
    pipeline, stages, runs = load(conn, pipeline_id)
    if pipeline is None:
        raise UserError(f"no pipeline {pipeline_id!r}")
    info = conn.execute(QUERIES["pipeline_info"], {"id": pipeline_id}).fetchone()
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


def original_pipeline_view(conn: psycopg.Connection[Any], view: dict[str, Any]) -> dict[str, Any]:
    """``pipeline-show`` as the original prints it (``pipeline`` and one ``stages`` entry per run), ours beside.

    Our per-stage view moves to ``dag``.
    """
    rows = {r[0]: r for r in conn.execute(QUERIES["runs_shown"], {"id": view["id"]})}
    runs_of = {stage["name"]: [r["id"] for r in stage["runs"]] for stage in view["stages"]}
    stages = []
    for stage in view["stages"]:
        after = [{"stage": p, "run_id": r} for p in stage["parents"] for r in runs_of[p]]
        for run_id in runs_of[stage["name"]]:
            _, executor, job_id, status, run_dir, _ = rows[run_id]
            shown = {"stage_name": stage["name"], "run_id": run_id, "status": status}
            stages.append(
                shown
                | {"job_id": shown_job_id(executor, run_id, job_id, status) or None}
                | {"dependency_on": {"afterok": after}, "run_dir": run_dir}
            )
    created = next(iter(rows.values()))[5] if rows else None
    pipeline = {"id": view["id"], "name": view["name"], "pipeline_path": view["file"], "created_at": created}
    ours = {k: v for k, v in view.items() if k != "stages"}
    return {"pipeline": pipeline, "stages": stages, **ours, "dag": view["stages"]}


def submission_view(conn: psycopg.Connection[Any], submitted: PipelineSubmitted) -> dict[str, Any]:
    """What ``run-pipeline`` prints as JSON: the original's ``pipeline_id``, ``name`` and ``stages``, ours beside."""
    rows = {r[0]: r for r in conn.execute(QUERIES["runs_submitted"], {"id": submitted.pipeline_id})}
    parents = dict(conn.execute(QUERIES["stage_parents"], {"id": submitted.pipeline_id}).fetchall())
    stages = []
    for stage, run_ids in submitted.runs.items():
        depends_on = [r for p in parents.get(stage, []) for r in submitted.runs[p]]
        for run_id in run_ids:
            _, executor, job_id, status = rows[run_id]
            job = shown_job_id(executor, run_id, job_id, status)
            stages.append({"stage_name": stage, "run_id": run_id, "job_id": job, "depends_on": depends_on})
    return {
        "pipeline_id": submitted.pipeline_id,
        "name": submitted.name,
        "stages": stages,
        "sweep_id": submitted.sweep_id,
        "runs": submitted.runs,
    }


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


class PipelineListed(msgspec.Struct, frozen=True):
    """One line of ``labctl pipelines``."""

    id: str
    name: str
    status: str
    user: str
    created_at: datetime
    finished_at: datetime | None


def pipelines_list(conn: psycopg.Connection[Any], user: str | None, limit: int = 50) -> list[PipelineListed]:
    """The latest ``limit`` pipelines (only ``user``'s unless None), newest first."""
    return rows_as(conn, PipelineListed, QUERIES["pipelines_list"], {"user": user, "limit": limit})
