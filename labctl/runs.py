"""Reading runs (status, show, log) and asking them to stop (cancel)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
import psycopg
from psycopg import sql

from events.queries import load_queries, rows_as
from labctl import layout
from labctl.errors import UserError
from labctl.jsontext import dumps
from labctl.lookup import resolve_id
from projections.runs import RUN_STATES, TERMINAL_STATES

QUERIES = load_queries("labctl", "runs.sql")


class StatusRow(msgspec.Struct, frozen=True):
    """One line of ``labctl status`` (the columns of the ``status_*`` queries, by name)."""

    id: str
    name: str
    status: str
    exit_code: int | None
    user: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cache_key: str | None
    pipeline_id: str | None
    stage_name: str | None
    sweep_id: str | None
    job_id: str | None
    executor: str
    reason: str | None


def read_model_lag(conn: psycopg.Connection[Any]) -> int:
    """Events of the log the read models have not applied. Every append projects in its own
    transaction, so this is 0 unless an import was stopped before its rebuild or events were
    appended bare; until the next write or ``labctl replay`` brings them up, reads show the past."""
    import projections
    from events import last_position

    return last_position(conn) - projections.checkpoint(conn)


def resolve_run(conn: psycopg.Connection[Any], ref: str) -> str:
    """A run id from an id or an unambiguous prefix (with or without ``run_``)."""
    return resolve_id(conn, "runs", "run", ref)


def status_query(*, user: str | None, state: str | None, everything: bool) -> tuple[str, dict[str, Any]]:
    """The SQL behind ``labctl status``: the user's unfinished runs plus the latest 20, or everything.

    ``user`` and ``state`` filter when not None (nullable parameters of one named query each)."""
    params: dict[str, Any] = {"user": user, "state": state}
    if everything:
        return QUERIES["status_all"], params
    return QUERIES["status_default"], params | {"unfinished": sorted(RUN_STATES - TERMINAL_STATES)}


def status_rows(
    conn: psycopg.Connection[Any], *, user: str | None, state: str | None, everything: bool
) -> list[StatusRow]:
    query, params = status_query(user=user, state=state, everything=everything)
    return rows_as(conn, StatusRow, query, params)


class RunJob(msgspec.Struct, frozen=True):
    """Where a run's job runs, and the run's state."""

    id: str
    executor: str
    job_id: str | None
    status: str


def run_jobs(conn: psycopg.Connection[Any], run_ids: list[str]) -> list[RunJob]:
    return rows_as(conn, RunJob, QUERIES["run_jobs"], {"ids": run_ids})


def stage_labels(conn: psycopg.Connection[Any], run_ids: list[str]) -> dict[str, str]:
    """run id -> its stage's name, with ``#<index>`` for a sweep point."""
    return {
        run_id: stage if index is None else f"{stage} #{index}"
        for run_id, stage, index in conn.execute(QUERIES["run_stages"], {"ids": run_ids}).fetchall()
    }


def pipeline_state(conn: psycopg.Connection[Any], pipeline_id: str) -> tuple[str, str | None] | None:
    """``(status, reason)`` of a pipeline, None if there is none."""
    row = conn.execute(QUERIES["pipeline_state"], {"id": pipeline_id}).fetchone()
    return (row[0], row[1]) if row else None


def write_status_json(
    conn: psycopg.Connection[Any], out: Any, *, user: str | None, state: str | None, everything: bool
) -> int:
    """Stream status rows as JSON lines, built by the server (fast at 100k rows)."""
    query, params = status_query(user=user, state=state, everything=everything)
    copy_sql = sql.SQL("COPY (SELECT row_to_json(r)::text FROM ({}) r) TO STDOUT").format(sql.SQL(query))
    n = 0
    pending = bytearray()
    with conn.cursor() as cur, cur.copy(copy_sql, params) as copy:
        for chunk in copy:
            # COPY's text format escapes backslashes; JSON text never contains a raw tab or newline.
            pending += bytes(chunk).replace(b"\\\\", b"\\")
            n += 1
            if len(pending) >= 1 << 16:  # few large writes, even when stdout is unbuffered
                out.write(pending)
                pending.clear()
    out.write(pending)
    out.flush()
    return n


def set_search_path(conn: psycopg.Connection[Any], schema: str) -> None:
    conn.execute(sql.SQL("SET search_path = {}, labctl").format(sql.Identifier(schema)))


def show_run(conn: psycopg.Connection[Any], run_id: str) -> dict[str, Any]:
    cur = conn.execute(QUERIES["run_row"], {"id": run_id})
    names = [d.name for d in cur.description or []]
    row = cur.fetchone()
    if row is None:
        raise UserError(f"no run {run_id!r}")
    shown: dict[str, Any] = dict(zip(names, row, strict=True))
    inputs = conn.execute(QUERIES["run_inputs"], {"id": run_id}).fetchall()
    # each input and output also carries the original's keys (resolved_path; id, kind, metadata_json, ...)
    shown["inputs"] = [
        {"role": r, "type": t, "path": p, "artifact_id": a, "alias": al, "resolved_path": p}
        for r, t, p, a, al in inputs
    ]
    outputs = conn.execute(QUERIES["run_outputs"], {"id": run_id}).fetchall()
    shown["outputs"] = [
        {"role": r, "artifact_id": a, "path": p, "step": st, "id": a, "kind": k}
        | {"producer_run_id": prod, "metadata_json": meta, "created_at": at}
        for r, a, p, st, k, prod, meta, at in outputs
    ]
    log = log_path(shown)
    shown["log"] = str(log) if log else None
    # the GPU ids a local job was given, as its JobSubmitted recorded them
    gpus = conn.execute(QUERIES["job_gpus"], {"stream": f"run-{run_id}"}).fetchone()
    if gpus is not None and gpus[0] is not None:
        shown["gpus"] = gpus[0]
    shown["run"] = _original_run(conn, shown)
    shown["aliases"] = [[alias, aid] for alias, aid in conn.execute(QUERIES["output_aliases"], {"id": run_id})]
    shown["eval_requests"] = [
        {"eval_key": k, "checkpoint_artifact_id": c, "eval_recipe_hash": h, "policy_id": p, "eval_run_id": r}
        | {"state": st or "pending"}
        for k, c, h, p, r, st in conn.execute(QUERIES["eval_requests"], {"id": run_id})
    ]
    original = conn.execute(QUERIES["imported_run"], {"id": run_id}).fetchone()
    if original is not None:
        # Imported from an original labctl registry: its own fields, as they were there.
        keys = ("recipe_hash", "source_path", "context", "dependency_on", "tracking", "original_events")
        shown["original"] = dict(zip(keys, original, strict=True))
    shown["cache"] = cache_view(conn, run_id, shown)
    return shown


def cache_view(conn: psycopg.Connection[Any], run_id: str, row: dict[str, Any]) -> dict[str, Any]:
    """The run's cache key, what it covers, and the run whose outputs it reused (if any)."""
    from labctl.cache_key import explain
    from labctl.submissions import submission_of

    sub = submission_of(conn, run_id)
    parts = sub.cache_parts if sub else None
    view: dict[str, Any] = {"key": row.get("cache_key"), "parts": msgspec.to_builtins(parts) if parts else None}
    if sub is not None and sub.no_cache:
        view["no_cache"] = True
    if row.get("cache_key"):
        view["explained"] = explain(row["cache_key"], parts, inputs=sub.inputs if sub else (), repo=row.get("repo"))
    producer = row.get("producer_run_id")
    if producer:
        found = conn.execute(QUERIES["run_status"], {"id": producer}).fetchone()
        view["reused"] = {"run_id": producer, "status": found[0] if found else None}
        view["reused"]["finished_at"] = found[1] if found else None
    return view


def reuse_line(conn: psycopg.Connection[Any], producer: str) -> str:
    """``cache hit: reused the outputs of run_… (succeeded <when>)``."""
    from labctl.cache_key import hit_line

    found = conn.execute(QUERIES["run_status"], {"id": producer}).fetchone()
    return hit_line(producer, found[1] if found else None, found[0] if found else None)


def shown_job_id(executor: str, run_id: str, job_id: str | None, status: str) -> str:
    """The job id the original would print: the SLURM job id, ``local-<run id>`` for a local job,
    "" for a run that never had a job (a cache hit, a waiting stage, a run waiting on its peer)."""
    if executor == "local":
        return layout.local_job_id(run_id) if job_id or status in ("submitted", "queued") else ""
    return job_id or ""


def _original_run(conn: psycopg.Connection[Any], run: dict[str, Any]) -> dict[str, Any]:
    """The run as the original's ``show`` prints it (``run`` of its run view), from our row and context.json."""
    try:
        context = orjson.loads((Path(run["run_dir"]) / layout.LAB_DIRNAME / "context.json").read_bytes())
    except (OSError, ValueError):
        context = None
    parents = conn.execute(QUERIES["parent_stages"], {"pipeline": run["pipeline_id"], "id": run["id"]}).fetchall()
    after = [{"stage": stage, "run_id": r} for stage, run_ids in parents for r in run_ids]
    repo = run.get("repo")
    return {
        "id": run["id"],
        "recipe_name": run["name"],
        "recipe_hash": (context or {}).get("recipe_hash"),
        "status": run["status"],
        "job_id": shown_job_id(run["executor"], run["id"], run["job_id"], run["status"]) or None,
        "run_dir": run["run_dir"],
        "repo": repo,
        "source_path": str(layout.source_dir(run["run_dir"], repo)) if repo else None,
        "recipe_json": run["recipe"],
        "context_json": context,
        "created_at": int(run["created_at"].timestamp()),
        "finished_at": int(run["finished_at"].timestamp()) if run["finished_at"] else None,
        "pipeline_id": run["pipeline_id"],
        "stage_name": run["stage_name"],
        "dependency_on": {"afterok": after} if run["pipeline_id"] else None,
        "submitted_by": run["user_name"],
        "cache_key": run["cache_key"],
    }


def log_path(run: dict[str, Any]) -> Path | None:
    """The run's job log (``.lab/<job name>_<job id>.log``): the newest there is, else where it will be."""
    found = layout.find_job_log(run["run_dir"])
    if found is not None:
        return found
    if run["executor"] == "local":
        return layout.job_log(run["run_dir"], run["name"], layout.local_job_id(run["id"]))
    return layout.job_log(run["run_dir"], run["name"], run["job_id"]) if run.get("job_id") else None


def to_json(value: Any) -> str:
    return dumps(value, indent=True).decode()


def is_terminal(conn: psycopg.Connection[Any], run_id: str) -> bool:
    row = conn.execute(QUERIES["run_status"], {"id": run_id}).fetchone()
    return row is None or row[0] in TERMINAL_STATES
