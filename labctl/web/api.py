"""What the dashboard shows, as plain JSON-able values: one function per view.

Each function takes an autocommit connection and typed parameters (decoded
once from the query string) and returns what both the JSON route and the
HTML page render. Keys follow the original labctl's API (``recipe_name``,
``submitted_by``, ``series_by_metric``, ...); extra keys are ours.
"""

from __future__ import annotations

import base64
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

import events
from events import StoredEvent, UnknownEvent
from events.queries import load_queries
from labctl import layout
from labctl import metrics as logged
from labctl.errors import UserError
from labctl.eventlog import event_json
from labctl.eventlog import summary as event_summary
from labctl.lookup import resolve_id
from labctl.runs import log_path
from projections.runs import TERMINAL_STATES

Q = load_queries("labctl.web")
T = TypeVar("T")
Conn = psycopg.Connection[Any]

FAILED_STATES = TERMINAL_STATES - {"succeeded", "cache_hit"}
MAX_COMPARE = 10
LINEAGE_HOPS = 6
MAX_DIFF_BYTES = 200_000  # a dirty diff beyond this is cut (the event keeps all of it)


class BadRequest(Exception):
    """A query parameter has a bad value (400)."""


class NotFound(Exception):
    """No such run, pipeline, artifact, ... (404)."""


Limit = Annotated[int, msgspec.Meta(ge=1, le=1000)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class RunsQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    user: Name | None = None
    state: Name | None = None
    recipe: Name | None = None
    pipeline: Name | None = None
    q: Name | None = None
    sort: Literal["created", "name", "user", "status", "duration"] = "created"
    order: Literal["desc", "asc"] = "desc"
    after: Annotated[str, msgspec.Meta(max_length=400)] | None = None  # the cursor of the previous page's last row
    limit: Limit = 100


class PipelinesQuery(msgspec.Struct, frozen=True):
    user: Name | None = None
    limit: Limit = 50


class ArtifactsQuery(msgspec.Struct, frozen=True):
    kind: Name | None = None
    user: Name | None = None
    after: Annotated[str, msgspec.Meta(max_length=400)] | None = None
    limit: Limit = 200


class EvalsQuery(msgspec.Struct, frozen=True):
    policy: Name | None = None
    limit: Limit = 500


class EventsQuery(msgspec.Struct, frozen=True):
    after: Annotated[int, msgspec.Meta(ge=0, le=2**62)] = 0
    limit: Limit = 1000
    stream: Name | None = None
    type: list[Name] | None = None
    tail: Limit | None = None  # the newest N events (before ``before``) instead of those after ``after``
    before: Annotated[int, msgspec.Meta(ge=1, le=2**62)] | None = None


class LogQuery(msgspec.Struct, frozen=True):
    tail: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 200


class HistoryQuery(msgspec.Struct, frozen=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=200)] = 20


class CompareQuery(msgspec.Struct, frozen=True):
    ids: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class PlotQuery(msgspec.Struct, frozen=True):
    metric: Name | None = None
    policy: Name | None = None


_LISTS = {"type"}


def decode_query(items: Iterable[tuple[str, str]], into: type[T]) -> T:
    """The query string as a typed value; a bad parameter is a 400 that names it. Empty values are absent."""
    raw: dict[str, Any] = {}
    for key, value in items:
        if value == "":
            continue
        if key in _LISTS:
            raw.setdefault(key, []).append(value)
        else:
            raw[key] = value
    try:
        return msgspec.convert(raw, into, strict=False)
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc)) from exc


def _rows(conn: Conn, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(Q[name], params).fetchall()


def _resolve(conn: Conn, table: str, kind: str, ref: str) -> str:
    try:
        return resolve_id(conn, table, kind, ref)
    except UserError as exc:
        raise NotFound(str(exc)) from exc


# ----------------------------------------------------------------------- runs


def duration_secs(row: dict[str, Any], now: datetime | None = None) -> float | None:
    """Seconds from start (else submission) to the end, or to now while the run is unfinished."""
    begin = row.get("started_at") or row.get("created_at")
    end = row.get("finished_at")
    if begin is None:
        return None
    if end is None:
        if row.get("status") in TERMINAL_STATES or row.get("started_at") is None:
            return None
        end = now or datetime.now(UTC)
    return round(float((end - begin).total_seconds()), 3)


def run_summary(row: dict[str, Any]) -> dict[str, Any]:
    """A run as the original's list view shows it (plus our columns)."""
    return {
        "id": row["id"],
        "recipe_name": row["name"],
        "recipe_hash": row.get("cache_key"),
        "status": row["status"],
        "job_id": row.get("job_id"),
        "run_dir": row.get("run_dir"),
        "repo": row.get("repo"),
        "created_at": row["created_at"],
        "started_at": row.get("started_at"),
        "finished_at": row.get("finished_at"),
        "duration_secs": duration_secs(row),
        "pipeline_id": row.get("pipeline_id"),
        "stage_name": row.get("stage_name"),
        "sweep_id": row.get("sweep_id"),
        "sweep_index": row.get("sweep_index"),
        "submitted_by": row["user_name"],
        "user": row["user_name"],
        "name": row["name"],
        "executor": row.get("executor"),
        "exit_code": row.get("exit_code"),
        "reason": row.get("reason"),
        "is_terminal": row["status"] in TERMINAL_STATES,
        "params": row.get("params") or {},
        "args": row.get("args") or {},
    }


def numeric_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The plottable values of a metrics dict (numbers, not ``step``, not booleans)."""
    if not metrics:
        return {}
    return {
        k: v
        for k, v in metrics.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool) and v == v  # NaN is not plottable
    }


#: the runs page's sort keys, never taken from the request; ties go newest first, then by id, and
#: schema.sql has an index on (key, created_at, id) for each, which also serves the filter on that column
SORT_KEYS = {
    "created": sql.SQL("r.created_at"),
    "name": sql.SQL("r.name"),
    "user": sql.SQL("r.user_name"),
    "status": sql.SQL("r.status"),
    # seconds from start (else submission) to the end; a run not ended yet sorts as longest (still going)
    "duration": sql.SQL(
        "coalesce(date_part('epoch', r.finished_at - coalesce(r.started_at, r.created_at)), 'Infinity'::float8)"
    ),
}
_CREATED, _ID = sql.SQL("r.created_at"), sql.SQL("r.id")


def encode_cursor(*keys: Any) -> str:
    """The position after a page's last row: its sort key(s) and id, opaque to the client."""
    text = "\x00".join(k.isoformat() if isinstance(k, datetime) else str(k) for k in keys)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> list[Any]:
    """``[key, created_at, id]`` (``[created_at, id]`` when sorting by creation, as artifacts are)."""
    try:
        parts = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("\x00")
        if len(parts) != (2 if sort == "created" else 3):
            raise ValueError("wrong number of keys")
        *keys, run_id = parts
        if sort != "created":
            key = keys.pop(0)
            typed: list[Any] = [float(key) if sort == "duration" else key]
        else:
            typed = []
        return [*typed, datetime.fromisoformat(keys[0]), run_id]
    except ValueError as exc:
        raise BadRequest(f"after: {cursor!r} is not a cursor from a previous page of this sort") from exc


def runs_page_query(q: RunsQuery) -> tuple[sql.Composed, dict[str, Any]]:
    """The SQL of one page of runs and its parameters (``runs_page`` runs it; the benchmarks explain it)."""
    keys = [_CREATED, _ID] if q.sort == "created" else [SORT_KEYS[q.sort], _CREATED, _ID]
    direction = sql.SQL(" DESC" if q.order == "desc" else " ASC")
    after = decode_cursor(q.after, q.sort) if q.after else None
    query = sql.SQL(Q["runs_page"]).format(
        sort=SORT_KEYS[q.sort],
        keys=sql.SQL(", ").join(keys),
        after=sql.SQL(", ").join(sql.Placeholder(f"after{i}") for i in range(len(keys))),
        cmp=sql.SQL("<" if q.order == "desc" else ">"),
        order=sql.SQL(", ").join(k + direction for k in keys),
    )
    params = {
        "user": q.user,
        "state": q.state,
        "recipe": q.recipe,
        "pipeline": q.pipeline,
        "text": f"%{_like_escape(q.q)}%" if q.q else None,
        "paged": after is not None,
        **{f"after{i}": value for i, value in enumerate(after or [None] * len(keys))},
        "limit": q.limit + 1,
    }
    return query, params


def runs_page(conn: Conn, q: RunsQuery) -> dict[str, Any]:
    """One page of runs (keyset-paged: as fast on page 1,000 as on page 1) and the cursor of the next."""
    query, params = runs_page_query(q)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query, params).fetchall()
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    last_logged = logged.summaries(conn, [r["id"] for r in rows]) if rows else {}
    runs = []
    for row in rows:
        summary_ = run_summary(row)
        values = {n: s.last for n, s in last_logged.get(row["id"], {}).items() if s.last is not None}
        summary_["metrics"] = values | numeric_metrics(row["metrics"])  # an eval's value wins over a logged one
        runs.append(summary_)
    last = rows[-1] if more and rows else None
    cursor = None
    if last is not None:
        keys = [last["created_at"], last["id"]]
        cursor = encode_cursor(*keys) if q.sort == "created" else encode_cursor(last["sort_key"], *keys)
    return {"runs": runs, "next": cursor}


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_TIMELINE_STATES = {
    "RunSubmitted": "submitted",
    "RunPending": "pending",
    "RunCacheHit": "cache_hit",
    "RunCoalesced": "awaiting_peer",
    "RunClaimed": "claimed",
    "SubmissionIntended": "submitting",
    "JobSubmitted": "queued",
    "RunStarted": "running",
    "CancelRequested": "cancel requested",
}


def timeline(stream: Sequence[StoredEvent]) -> list[dict[str, Any]]:
    """The run's states as the log recorded them, oldest first."""
    out = []
    for e in stream:
        state = _TIMELINE_STATES.get(e.type)
        if e.type == "RunFinished" and not isinstance(e.data, UnknownEvent):
            state = getattr(e.data, "state", None)
        out.append(
            {
                "position": e.position,
                "type": e.type,
                "state": state,
                "recorded_at": e.recorded_at,
                "actor": e.meta.actor,
                "summary": event_summary(e),
            }
        )
    return out


def run_detail(conn: Conn, ref: str) -> dict[str, Any]:
    """One run: the row, its timeline, provenance, inputs, outputs, eval series and tracking link."""
    run_id = _resolve(conn, "runs", "run", ref)
    [row] = _rows(conn, "run_row", {"id": run_id})
    stream = events.read_stream(conn, f"run-{run_id}")
    submitted = next((e.data for e in stream if e.type == "RunSubmitted"), None)
    diff = getattr(submitted, "repo_diff", None)
    run = run_summary({**row, "params": (row["recipe"] or {}).get("params")})
    run.update(
        recipe=row["recipe"],
        recipe_path=row["recipe_path"],
        source_path=row["recipe_path"],
        context={"host": next((getattr(e.data, "host", None) for e in stream if e.type == "RunStarted"), None)},
        dependency_on=getattr(next((e.data for e in stream if e.type == "RunPending"), None), "parents", None),
        agent_id=row["agent_id"],
        cancel_requested=row["cancel_requested"],
        producer_run_id=row["producer_run_id"],
        cache_key=row["cache_key"],
        log=str(log) if (log := log_path(row)) else None,
    )
    inputs = _rows(conn, "run_inputs", {"id": run_id})
    for i in inputs:
        i["resolved_path"] = i["path"]
    outputs = []
    for o in _rows(conn, "run_outputs", {"id": run_id}):
        o["id"] = o["artifact_id"]
        if o["result"] is None:
            del o["result"]
        outputs.append(o)
    url = getattr(submitted, "tracking_url", None)
    if not (isinstance(url, str) and url.startswith(("https://", "http://"))):
        url = None  # only a web address becomes a link (never javascript: or data:)
    return {
        "run": run,
        "inputs": inputs,
        "outputs": outputs,
        "eval_series": eval_series(_rows(conn, "eval_points", {"ids": [run_id], "policy": None})),
        "metrics": [{"name": m.name, "steps": m.steps, "values": m.values} for m in logged.metrics_of(conn, [run_id])],
        "tracking": {"wandb": {"url": url} if url else None},
        "provenance": {
            "repo": row["repo"],
            "commit": row["repo_commit"],
            "dirty": row["repo_dirty"],
            "diff": diff[:MAX_DIFF_BYTES] if diff else None,
            "diff_truncated": bool(diff and len(diff) > MAX_DIFF_BYTES),
        },
        "timeline": timeline(stream),
    }


def eval_series(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's evals grouped by policy, by step: the trajectory of each policy's metric."""
    by_policy: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in points:
        by_policy[p["policy"]].append(p)
    series = []
    for policy, pts in sorted(by_policy.items()):
        shaped = []
        for p in pts:
            metric = key_metric(p["metrics"])
            shaped.append(
                {
                    "step": p["step"],
                    "value": metric[1] if metric else None,
                    "metric_name": metric[0] if metric else None,
                    "metrics": numeric_metrics(p["metrics"]),
                    "eval_run_id": p["eval_run_id"],
                    "checkpoint_artifact_id": p["checkpoint_artifact_id"],
                    "state": p["state"],
                }
            )
        valued = [p for p in shaped if p["value"] is not None]
        latest = valued[-1] if valued else None
        series.append(
            {
                "policy_id": policy,
                "metric_name": latest["metric_name"] if latest else None,
                "latest_value": latest["value"] if latest else None,
                "latest_step": latest["step"] if latest else None,
                "previous_value": valued[-2]["value"] if len(valued) > 1 else None,
                "count": len(shaped),
                "points": shaped,
            }
        )
    return series


_PREFERRED = ("strict_accuracy", "accuracy", "acc", "pass@1", "exact_match", "score")


def _preferred(name: str) -> bool:
    return name.rsplit("/", 1)[-1].lower() in _PREFERRED


def key_metric(metrics: dict[str, Any] | None) -> tuple[str, float] | None:
    """The headline metric of an eval: a preferred name (accuracy, score, ...) if any, else the first number."""
    values = numeric_metrics(metrics)
    for name, value in values.items():
        if _preferred(name):
            return name, value
    return next(iter(values.items()), None)


def run_log(conn: Conn, ref: str, q: LogQuery) -> dict[str, Any]:
    run_id = _resolve(conn, "runs", "run", ref)
    [row] = _rows(conn, "run_row", {"id": run_id})
    # a SLURM log is named after its job id: before there is one, there is no log to tail
    path = log_path(row) or Path(row["run_dir"]) / layout.LAB_DIRNAME / "no-job-yet.log"
    lines, truncated, size = read_tail(path, q.tail)
    return {"run_id": run_id, "lines": lines, "path": str(path), "truncated": truncated, "size": size}


def read_tail(path: Path, count: int, *, max_bytes: int = 1 << 20) -> tuple[list[str], bool, int]:
    """The last ``count`` lines of a file (at most ``max_bytes`` read), whether earlier lines exist, and its size."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(size - start)
    except OSError:
        return [], False, 0
    lines = data.decode("utf-8", "replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the first line read is probably cut
    return lines[-count:], start > 0 or len(lines) > count, size


def run_events(conn: Conn, ref: str) -> list[StoredEvent]:
    run_id = _resolve(conn, "runs", "run", ref)
    return events.read_stream(conn, f"run-{run_id}")


# ------------------------------------------------------------- metric pivots


def metric_pivot(conn: Conn, run_ids: Sequence[str], *, policy: str | None = None) -> dict[str, Any]:
    """For these runs: one entry per metric, each with one trajectory (points by step) per run.

    Metrics come from the evals of each run's checkpoints and from what the run logged itself
    (``labctl log-metric``); a logged name that an eval also reports is shown as ``logged/<name>``.

    Metrics measured by the most runs come first (then preferred names, then by name), so the
    first is the natural default to plot.
    """
    rows = {r["id"]: r for r in _rows(conn, "runs_by_ids", {"ids": list(run_ids)})}
    ordered = [rows[i] for i in run_ids if i in rows]
    by_metric: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for p in _rows(conn, "eval_points", {"ids": list(run_ids), "policy": policy}):
        for name, value in numeric_metrics(p["metrics"]).items():
            by_metric[name][p["producer_run_id"]].append(
                {
                    "step": p["step"],
                    "value": value,
                    "eval_run_id": p["eval_run_id"],
                    "state": p["state"],
                    "checkpoint_artifact_id": p["checkpoint_artifact_id"],
                    "policy": p["policy"],
                    "source": "eval",
                }
            )
    evaluated = set(by_metric)
    for m in logged.metrics_of(conn, [r["id"] for r in ordered]):
        name = f"logged/{m.name}" if m.name in evaluated else m.name  # an eval's metric keeps the plain name
        by_metric[name][m.run_id].extend(
            {"step": step, "value": value, "source": "logged"}
            for step, value in zip(m.steps, m.values, strict=True)
            if value is not None and value == value
        )
    series = []
    for metric, per_run in by_metric.items():
        trajectories = []
        for run in ordered:
            pts = sorted(per_run.get(run["id"], []), key=lambda p: (p["step"] is None, p["step"] or 0))
            if not pts:
                continue
            trajectories.append(
                {
                    "run_id": run["id"],
                    "run_recipe_name": run["name"],
                    "run_status": run["status"],
                    "run_created_at": run["created_at"],
                    "count": len(pts),
                    "latest_value": pts[-1]["value"],
                    "latest_step": pts[-1]["step"],
                    "previous_value": pts[-2]["value"] if len(pts) > 1 else None,
                    "points": pts,
                }
            )
        series.append({"metric_name": metric, "run_count": len(trajectories), "runs": trajectories})
    series.sort(key=_metric_order)
    return {
        "runs": [run_summary(r) for r in ordered],
        "metrics": [s["metric_name"] for s in series],
        "series_by_metric": series,
    }


def _metric_order(series: dict[str, Any]) -> tuple[int, bool, str]:
    name = str(series["metric_name"])
    return -int(series["run_count"]), not _preferred(name), name


def compare(conn: Conn, q: CompareQuery) -> dict[str, Any]:
    """2-10 runs side by side: params, resources, inputs and the metric curves of each."""
    refs = [r.strip() for r in q.ids.split(",") if r.strip()]
    if len(refs) > MAX_COMPARE:
        raise BadRequest(f"ids: compare takes at most {MAX_COMPARE} runs, got {len(refs)}")
    run_ids = list(dict.fromkeys(_resolve(conn, "runs", "run", r) for r in refs))
    body = metric_pivot(conn, run_ids)
    details = []
    for run_id in run_ids:
        [row] = _rows(conn, "run_row", {"id": run_id})
        recipe = row["recipe"] or {}
        details.append(
            {
                "id": run_id,
                "params": recipe.get("params") or {},
                "args": recipe.get("args") or {},
                "resources": recipe.get("resources") or {},
                "env": recipe.get("env") or {},
                "command": recipe.get("command"),
                "inputs": {
                    i["role"]: i["alias"] or i["artifact_id"] or i["path"]
                    for i in _rows(conn, "run_inputs", {"id": run_id})
                },
            }
        )
    body["details"] = details
    body["final_metrics"] = {
        s["metric_name"]: {t["run_id"]: t["latest_value"] for t in s["runs"]} for s in body["series_by_metric"]
    }
    return body


def recipe(conn: Conn, name: str) -> dict[str, Any]:
    run_ids = [r["id"] for r in _rows(conn, "runs_of_recipe", {"name": name, "limit": 200})]
    if not run_ids:
        raise NotFound(f"recipe not found: {name}")
    return {"recipe_name": name, **metric_pivot(conn, run_ids)}


def recipe_history(conn: Conn, name: str, q: HistoryQuery) -> dict[str, Any]:
    rows = _rows(conn, "recipe_history", {"name": name, "limit": q.limit})
    return {"recipe_name": name, "history": rows}


# ------------------------------------------------------------------ pipelines


def pipelines(conn: Conn, q: PipelinesQuery) -> dict[str, Any]:
    rows = _rows(conn, "pipelines_list", {"user": q.user, "limit": q.limit})
    out = []
    for p in rows:
        stages = _rows(conn, "pipeline_stages", {"id": p["id"]})
        out.append(
            {
                "id": p["id"],
                "name": p["name"],
                "pipeline_path": p["file_path"],
                "created_at": p["created_at"],
                "finished_at": p["finished_at"],
                "stage_count": p["stage_count"],
                "status": p["status"],
                "user": p["user_name"],
                "reason": p["reason"],
                "stages": [_stage(s) for s in stages],
            }
        )
    return {"pipelines": out}


def _stage(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": s["stage_name"],
        "parents": s["parents"],
        "status": s["status"],
        "run_ids": s["run_ids"],
        "runs": s["runs"],
    }


def pipeline(conn: Conn, ref: str) -> dict[str, Any]:
    """A pipeline, each run of it (the original's ``stages``) and its stage graph (the DAG)."""
    pipeline_id = _resolve(conn, "pipelines", "pipeline", ref)
    [p] = _rows(conn, "pipeline_row", {"id": pipeline_id})
    runs = _rows(conn, "pipeline_runs", {"id": pipeline_id})
    graph = [_stage(s) for s in _rows(conn, "pipeline_stages", {"id": pipeline_id})]
    parents = {s["name"]: s["parents"] for s in graph}
    stages = []
    for r in runs:
        shaped = run_summary(r)
        shaped["dependency_on"] = parents.get(r["stage_name"] or "")
        stages.append(shaped)
    return {
        "pipeline": {
            "id": p["id"],
            "name": p["name"],
            "pipeline_path": p["file_path"],
            "created_at": p["created_at"],
            "finished_at": p["finished_at"],
            "status": p["status"],
            "user": p["user_name"],
            "reason": p["reason"],
            "from_run": p["from_run"],
        },
        "stages": stages,
        "graph": graph,
        "sweeps": [r["id"] for r in _rows(conn, "sweeps_of_pipeline", {"id": pipeline_id})],
    }


def sweep(conn: Conn, ref: str, q: PlotQuery) -> dict[str, Any]:
    """A sweep: one point per run with its parameter value, state and chosen metric."""
    sweep_id = _resolve(conn, "sweeps", "sweep", ref)
    [s] = _rows(conn, "sweep_row", {"id": sweep_id})
    pivot = metric_pivot(conn, s["run_ids"], policy=q.policy)
    metric = q.metric or (pivot["metrics"][0] if pivot["metrics"] else None)
    if q.metric is not None and q.metric not in pivot["metrics"]:
        raise BadRequest(f"metric: this sweep has no metric {q.metric!r}")
    latest: dict[str, Any] = {}
    for series in pivot["series_by_metric"]:
        if series["metric_name"] == metric:
            latest = {t["run_id"]: t["latest_value"] for t in series["runs"]}
    points = []
    for run in sorted(pivot["runs"], key=lambda r: (r["sweep_index"] is None, r["sweep_index"] or 0)):
        index = run["sweep_index"]
        points.append(
            {
                "index": index,
                "value": _sweep_value(run, s["arg"], index),
                "run_id": run["id"],
                "status": run["status"],
                "exit_code": run["exit_code"],
                "metric": latest.get(run["id"]),
            }
        )
    return {
        "sweep": {k: s[k] for k in ("id", "name", "arg", "status", "throttle", "aggregate_run_id", "pipeline_id")}
        | {"start": s["start_index"], "end": s["end_index"], "user": s["user_name"], "created_at": s["created_at"]},
        "metrics": pivot["metrics"],
        "metric": metric,
        "points": points,
    }


def _sweep_value(run: dict[str, Any], arg: str, index: int | None) -> Any:
    """The parameter a point ran with: the recipe's arg or param of that name, else the index."""
    for source in (run.get("args"), run.get("params")):
        if isinstance(source, dict) and arg in source:
            value = source[arg]
            try:
                return float(value) if isinstance(value, str) else value
            except ValueError:
                return value
    return index


# ------------------------------------------------------------------ artifacts


def artifacts(conn: Conn, q: ArtifactsQuery) -> dict[str, Any]:
    after_key, after_id = decode_cursor(q.after, "created") if q.after else (None, None)
    rows = _rows(
        conn,
        "artifacts_list",
        {"kind": q.kind, "user": q.user, "after_key": after_key, "after_id": after_id, "limit": q.limit + 1},
    )
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    return {
        "artifacts": rows,
        "next": encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None,
    }


def resolve_artifact(conn: Conn, ref: str) -> str:
    """An artifact id from an id, an unambiguous prefix, or an alias (``user/name`` or ``name``)."""
    row = conn.execute(Q["artifact_by_alias"], {"ref": ref}).fetchone()
    if row:
        return str(row[0])
    return _resolve(conn, "artifacts", "artifact", ref)


def artifact(conn: Conn, ref: str) -> dict[str, Any]:
    artifact_id = resolve_artifact(conn, ref)
    [a] = _rows(conn, "artifact_row", {"id": artifact_id})
    consumers = _rows(conn, "artifact_consumers", {"id": artifact_id})
    run_ids = [c["run_id"] for c in consumers] + ([a["producer_run_id"]] if a["producer_run_id"] else [])
    runs = {r["id"]: run_summary(r) for r in _rows(conn, "runs_by_ids", {"ids": run_ids})}
    return {
        "artifact": a,
        "producer": runs.get(a["producer_run_id"] or ""),
        "consumers": [runs[c["run_id"]] | {"input_role": c["role"]} for c in consumers if c["run_id"] in runs],
    }


def lineage(conn: Conn, ref: str) -> dict[str, Any]:
    """Runs and artifacts up (producers, their inputs, ...) and down (consumers, their outputs, ...)."""
    root = resolve_artifact(conn, ref)
    artifact_ids: set[str] = {root}
    run_ids: set[str] = set()
    edges: dict[tuple[str, str, str], dict[str, Any]] = {}

    def edge(src: str, dst: str, kind: str, role: str | None = None) -> None:
        edges.setdefault((src, dst, kind), {"from": src, "to": dst, "kind": kind, "role": role})

    # Upstream: artifact <- producer run <- its input artifacts <- ...
    frontier = {root}
    for _ in range(LINEAGE_HOPS):
        producers = {
            r["id"]: r["producer_run_id"]
            for r in _rows(conn, "artifacts_by_ids", {"ids": list(frontier)})
            if r["producer_run_id"]
        }
        for aid, rid in producers.items():
            edge(rid, aid, "produces")
        new_runs = set(producers.values()) - run_ids
        run_ids |= new_runs
        frontier = set()
        for i in _rows(conn, "inputs_of_runs", {"ids": list(new_runs)}):
            edge(i["artifact_id"], i["run_id"], "consumed_by", i["role"])
            if i["artifact_id"] not in artifact_ids:
                artifact_ids.add(i["artifact_id"])
                frontier.add(i["artifact_id"])
        if not frontier:
            break
    # Downstream: artifact -> consumer runs -> their outputs -> ...
    frontier = {root}
    for _ in range(LINEAGE_HOPS):
        consumers = _rows(conn, "consumers_of_artifacts", {"ids": list(frontier)})
        new_runs = set()
        for c in consumers:
            edge(c["artifact_id"], c["run_id"], "consumed_by", c["role"])
            if c["run_id"] not in run_ids:
                new_runs.add(c["run_id"])
        run_ids |= new_runs
        frontier = set()
        for o in _rows(conn, "outputs_of_runs", {"ids": list(new_runs)}):
            edge(o["run_id"], o["artifact_id"], "produces")
            if o["artifact_id"] not in artifact_ids:
                artifact_ids.add(o["artifact_id"])
                frontier.add(o["artifact_id"])
        if not frontier:
            break
    nodes = _rows(conn, "artifacts_by_ids", {"ids": list(artifact_ids)})
    for n in nodes:
        n["is_root"] = n["id"] == root
    return {
        "root_id": root,
        "artifacts": sorted(nodes, key=lambda n: n["id"]),
        "runs": sorted((run_summary(r) for r in _rows(conn, "runs_by_ids", {"ids": list(run_ids)})), key=_by_id),
        "edges": list(edges.values()),
    }


def _by_id(value: dict[str, Any]) -> str:
    return str(value["id"])


# ---------------------------------------------------------- evals and policies


def evals(conn: Conn, q: EvalsQuery) -> dict[str, Any]:
    return {"evals": _rows(conn, "evals_list", {"policy": q.policy, "limit": q.limit})}


def policies(conn: Conn) -> dict[str, Any]:
    """Each policy with its counts and the trajectories of its headline metric (newest 4 runs)."""
    totals: dict[str, dict[str, Any]] = {}
    for policy, status, count, last in conn.execute(Q["policy_summaries"]).fetchall():
        t = totals.setdefault(policy, {"total": 0, "failed": 0, "running": 0, "last": last})
        t["total"] += count
        t["failed"] += count if status in FAILED_STATES else 0
        t["running"] += count if status not in TERMINAL_STATES else 0
        t["last"] = max(t["last"], last)
    out = []
    for name, t in sorted(totals.items(), key=lambda kv: kv[1]["last"], reverse=True):
        producers = [r["producer_run_id"] for r in _rows(conn, "policy_producers", {"policy": name, "limit": 4})]
        pivot = metric_pivot(conn, producers, policy=name)
        primary = pivot["metrics"][0] if pivot["metrics"] else None
        out.append(
            {
                "name": name,
                "primary_metric": primary,
                "total_count": t["total"],
                "failed_count": t["failed"],
                "running_count": t["running"],
                "last_fired_at": t["last"],
                "series": pivot["series_by_metric"][0] if primary else None,
            }
        )
    return {"policies": out}


def policy(conn: Conn, name: str) -> dict[str, Any]:
    """Every training run a policy evaluated, pivoted by metric; and its eval requests."""
    producers = [r["producer_run_id"] for r in _rows(conn, "policy_producers", {"policy": name, "limit": 200})]
    requests = _rows(conn, "evals_list", {"policy": name, "limit": 1000})
    if not requests:
        raise NotFound(f"policy not found: {name}")
    return {"policy_name": name, **metric_pivot(conn, producers, policy=name), "requests": requests}


# --------------------------------------------------------------------- the log


def events_page(conn: Conn, q: EventsQuery) -> list[StoredEvent]:
    """Events oldest first: those after ``after``, or the newest ``tail`` (below ``before``)."""
    after, limit, until = q.after, q.limit, None
    if q.tail is not None or q.before is not None:
        count = q.tail or q.limit
        params = {"count": count, "before": q.before, "stream": q.stream, "types": q.type}
        row = conn.execute(Q["position_before_tail"], params).fetchone()
        after, limit = (int(row[0]) if row else 0), count
        until = q.before - 1 if q.before is not None else None
    return events.read_all(conn, after, limit, stream=q.stream, types=q.type, until=until)


def events_json(conn: Conn, q: EventsQuery) -> bytes:
    """``events_page`` as a JSON array of ``labctl events --json`` objects."""
    return b"[" + b",".join(event_json(e) for e in events_page(conn, q)) + b"]"


def log_head(conn: Conn) -> dict[str, Any]:
    row = conn.execute(Q["log_head"]).fetchone()
    return {"position": int(row[0]) if row else 0, "hash": row[1] if row else None}


def entity_link(stream: str) -> str | None:
    """The dashboard page of the entity an event stream belongs to."""
    kind, _, ident = stream.partition("-")
    pages = {
        "run": "/runs/",
        "metrics": "/runs/",
        "pipeline": "/pipelines/",
        "artifact": "/artifacts/",
        "sweep": "/sweeps/",
    }
    if kind in pages and ident:
        return pages[kind] + ident
    if kind == "alias" and ident:
        return "/artifacts/" + ident
    return None


def cluster(conn: Conn, info: dict[str, Any]) -> dict[str, Any]:
    return {**info, "agents": _rows(conn, "agents_alive", {}), "head": log_head(conn)}
