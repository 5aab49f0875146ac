"""The HTML pages: server-rendered with Jinja2 (autoescaped), kept live by static/live.js over SSE."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jinja2
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

import events
from labctl.eventlog import summary as event_summary
from labctl.web import api, svg

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("labctl.web", "templates"),
    autoescape=True,
    undefined=jinja2.ChainableUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
STATES = [
    "submitted",
    "pending",
    "queued",
    "running",
    "awaiting_peer",
    "succeeded",
    "cache_hit",
    "failed",
    "cancelled",
    "timeout",
    "oom",
    "node_fail",
    "dependency_failed",
    "unknown_terminal",
]


def _ts(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _bytes(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def _query(request: Request, **changes: Any) -> str:
    """This page's query string with some parameters changed (None removes one)."""
    params = {k: v for k, v in request.query_params.items() if k not in changes}
    params.update({k: v for k, v in changes.items() if v is not None})
    return "?" + urlencode(params) if params else "?"


ENV.filters.update(ts=_ts, dur=_dur, num=_num, bytes=_bytes)
ENV.globals.update(states=STATES, link=api.entity_link)


def render(request: Request, template: str, *, position: int, watch: str, **context: Any) -> HTMLResponse:
    html = ENV.get_template(template).render(
        request=request, position=position, watch=watch, query=lambda **c: _query(request, **c), **context
    )
    return HTMLResponse(html, headers={"cache-control": "no-store"})


def error_page(status: int, message: str) -> Response:
    html = ENV.get_template("error.html").render(status=status, message=message, position=0, watch="")
    return HTMLResponse(html, status_code=status)


async def _load(request: Request, work: Any, *args: Any) -> tuple[Any, int]:
    """``work(conn, *args)`` and the log position it was read at (the page's stream resumes from there)."""

    def both(conn: Any) -> tuple[Any, int]:
        position = events.last_position(conn)  # read first: anything later reaches the page over SSE
        return work(conn, *args), position

    web = request.app.state.web
    result: tuple[Any, int] = await web.db(both)
    return result


def _q(request: Request, into: type[Any]) -> Any:
    return api.decode_query(request.query_params.multi_items(), into)


# ---------------------------------------------------------------------- runs


def _common_keys(dicts: list[dict[str, Any]], limit: int) -> list[str]:
    counts: Counter[str] = Counter(k for d in dicts for k in d)
    return [k for k, _ in counts.most_common(limit)]


async def runs_page(request: Request) -> Response:
    q = _q(request, api.RunsQuery)
    page, position = await _load(request, api.runs_page, q)
    runs = page["runs"]
    return render(
        request,
        "runs.html",
        position=position,
        watch="run- metrics- eval-",
        q=q,
        sorts=list(api.SORT_KEYS),
        runs=runs,
        next=page["next"],
        param_keys=_common_keys([r["params"] for r in runs if isinstance(r["params"], dict)], 3),
        metric_keys=_common_keys([r["metrics"] for r in runs], 3),
    )


async def run_page(request: Request) -> Response:
    detail, position = await _load(request, api.run_detail, request.path_params["id"])
    run = detail["run"]
    log, _ = await _load(request, api.run_log, run["id"], api.LogQuery(tail=200))
    plots = []
    for series in detail["eval_series"]:
        names = sorted({m for p in series["points"] for m in p["metrics"]})
        for name in names:
            pts = [
                (p["step"], p["metrics"][name])
                for p in series["points"]
                if p["step"] is not None and name in p["metrics"]
            ]
            plots.append((series["policy_id"], name, svg.line_plot([svg.Series(name, pts)], y_label=name)))
    for m in detail["metrics"]:
        pts = [(step, v) for step, v in zip(m["steps"], m["values"], strict=True) if v is not None and v == v]
        plots.append(("logged", m["name"], svg.line_plot([svg.Series(m["name"], pts)], y_label=m["name"])))
    return render(
        request,
        "run.html",
        position=position,
        watch=f"run-{run['id']} metrics-{run['id']} artifact- alias- eval-",
        d=detail,
        run=run,
        log=log,
        plots=plots,
    )


# ----------------------------------------------------------------- pipelines


async def pipelines_page(request: Request) -> Response:
    q = _q(request, api.PipelinesQuery)
    data, position = await _load(request, api.pipelines, q)
    return render(request, "pipelines.html", position=position, watch="run- pipeline-", pipelines=data["pipelines"])


def _stage_nodes(detail: dict[str, Any]) -> list[svg.Node]:
    pid = detail["pipeline"]["id"]
    nodes = []
    for s in detail["graph"]:
        runs = s["runs"]
        href = f"/runs/{runs[0]['id']}" if len(runs) == 1 else f"/runs?pipeline={pid}&q={s['name']}"
        counts = Counter(r["status"] for r in runs)
        detail_text = s["status"] if len(runs) <= 1 else " ".join(f"{n} {st}" for st, n in counts.most_common(2))
        nodes.append(svg.Node(s["name"], s["name"], s["status"], href, list(s["parents"]), "stage", detail_text))
    return nodes


async def pipeline_page(request: Request) -> Response:
    detail, position = await _load(request, api.pipeline, request.path_params["id"])
    pid = detail["pipeline"]["id"]
    return render(
        request,
        "pipeline.html",
        position=position,
        watch=f"pipeline-{pid} run-",
        d=detail,
        p=detail["pipeline"],
        graph=svg.dag(_stage_nodes(detail)),
    )


async def sweep_page(request: Request) -> Response:
    q = _q(request, api.PlotQuery)
    detail, position = await _load(request, api.sweep, request.path_params["id"], q)
    numeric = all(isinstance(p["value"], int | float) for p in detail["points"])
    pts = [
        (float(p["value"]) if numeric else float(i), p["metric"])
        for i, p in enumerate(detail["points"])
        if p["metric"] is not None
    ]
    metric = detail["metric"] or ""
    plot = svg.line_plot(
        [svg.Series(metric, pts)], x_label=detail["sweep"]["arg"] if numeric else "point", y_label=metric
    )
    return render(request, "sweep.html", position=position, watch="run- eval-", d=detail, s=detail["sweep"], plot=plot)


# ------------------------------------------------------------- evals, compare


def _pivot_plot(pivot: dict[str, Any], metric: str | None) -> Markup:
    for series in pivot["series_by_metric"]:
        if series["metric_name"] == metric:
            lines = [
                svg.Series(
                    f"{t['run_id']} {t['run_recipe_name']}",
                    [(p["step"], p["value"]) for p in t["points"] if p["step"] is not None],
                    f"/runs/{t['run_id']}",
                )
                for t in series["runs"]
            ]
            return svg.line_plot(lines, y_label=metric or "", width=900, height=320)
    return Markup('<p class="muted">no values of this metric yet</p>')


async def evals_page(request: Request) -> Response:
    q = _q(request, api.PlotQuery)
    name = request.path_params.get("name") or q.policy
    listing, position = await _load(request, api.policies)
    chosen = None
    if name is None and listing["policies"]:
        name = listing["policies"][0]["name"]
    if name is not None:
        chosen, _ = await _load(request, api.policy, name)
    metric = q.metric or (chosen["metrics"][0] if chosen and chosen["metrics"] else None)
    if chosen is not None and q.metric is not None and q.metric not in chosen["metrics"]:
        raise api.BadRequest(f"metric: policy {name!r} has no metric {q.metric!r}")
    return render(
        request,
        "evals.html",
        position=position,
        watch="eval- run-",
        policies=listing["policies"],
        name=name,
        chosen=chosen,
        metric=metric,
        plot=_pivot_plot(chosen, metric) if chosen else None,
    )


def _differs(values: list[Any]) -> bool:
    return len({repr(v) for v in values}) > 1


async def compare_page(request: Request) -> Response:
    ids = ",".join(v for k, v in request.query_params.multi_items() if k == "ids")
    q = api.decode_query([("ids", ids)], api.CompareQuery)
    body, position = await _load(request, api.compare, q)
    metric = request.query_params.get("metric") or (body["metrics"][0] if body["metrics"] else None)
    if metric is not None and body["metrics"] and metric not in body["metrics"]:
        raise api.BadRequest(f"metric: these runs have no metric {metric!r}")
    details = body["details"]
    sections = []
    for title, key in (
        ("params", "params"),
        ("args", "args"),
        ("resources", "resources"),
        ("inputs", "inputs"),
        ("env", "env"),
    ):
        keys = sorted({k for d in details for k in d[key]})
        rows = [(k, [d[key].get(k) for d in details]) for k in keys]
        sections.append((title, [(k, vals, _differs(vals)) for k, vals in rows]))
    summary_rows = [
        (label, [r[field] for r in body["runs"]])
        for label, field in (("recipe", "recipe_name"), ("status", "status"), ("user", "user"))
    ]
    metric_rows = [(m, [body["final_metrics"][m].get(r["id"]) for r in body["runs"]]) for m in body["metrics"]]
    return render(
        request,
        "compare.html",
        position=position,
        watch=" ".join(f"run-{r['id']} metrics-{r['id']}" for r in body["runs"]) + " eval-",
        body=body,
        ids=ids,
        metric=metric,
        sections=sections,
        summary_rows=[(k, v, _differs(v)) for k, v in summary_rows],
        metric_rows=[(k, v, _differs(v)) for k, v in metric_rows],
        plot=_pivot_plot(body, metric),
    )


# ----------------------------------------------------------------- artifacts


async def artifacts_page(request: Request) -> Response:
    q = _q(request, api.ArtifactsQuery)
    data, position = await _load(request, api.artifacts, q)
    return render(
        request,
        "artifacts.html",
        position=position,
        watch="artifact- alias-",
        q=q,
        rows=data["artifacts"],
        next=data["next"],
    )


def _lineage_nodes(graph: dict[str, Any]) -> list[svg.Node]:
    parents: dict[str, list[str]] = {}
    for e in graph["edges"]:
        parents.setdefault(e["to"], []).append(e["from"])
    nodes = []
    for r in graph["runs"]:
        nodes.append(
            svg.Node(
                r["id"], r["recipe_name"], r["status"], f"/runs/{r['id']}", parents.get(r["id"], []), "run", r["id"]
            )
        )
    for a in graph["artifacts"]:
        label = a["aliases"][0] if a["aliases"] else a["id"]
        kind = "artifact root" if a["is_root"] else "artifact"
        nodes.append(
            svg.Node(a["id"], label, a["kind"], f"/artifacts/{a['id']}", parents.get(a["id"], []), kind, a["kind"])
        )
    return nodes


async def artifact_page(request: Request) -> Response:
    ref = request.path_params["id"]
    detail, position = await _load(request, api.artifact, ref)
    graph, _ = await _load(request, api.lineage, detail["artifact"]["id"])
    return render(
        request,
        "artifact.html",
        position=position,
        watch="artifact- alias- run-",
        d=detail,
        a=detail["artifact"],
        graph=svg.dag(_lineage_nodes(graph)),
        lineage=graph,
    )


# --------------------------------------------------------------------- events


async def events_page(request: Request) -> Response:
    q = _q(request, api.EventsQuery)
    q = api.EventsQuery(stream=q.stream, type=q.type, tail=q.tail or 200, before=q.before, limit=q.limit)
    page, position = await _load(request, api.events_page, q)
    head, _ = await _load(request, api.log_head)
    rows = [
        {
            "position": e.position,
            "recorded_at": e.recorded_at,
            "stream": e.stream,
            "type": e.type,
            "actor": e.meta.actor,
            "summary": event_summary(e),
            "link": api.entity_link(e.stream),
        }
        for e in reversed(page)
    ]
    audit = request.app.state.web.audit_result()
    return render(
        request,
        "events.html",
        position=position,
        watch="" if q.before else "*",
        q=q,
        rows=rows,
        head=head,
        audit=audit,
        types=sorted(events.event_types()),
        older=rows[-1]["position"] if len(rows) == q.tail else None,
    )


async def audit_page(request: Request) -> Response:
    """Run ``audit verify`` now (once per log head: a repeat is answered from memory)."""
    web = request.app.state.web
    await web.run_audit()
    return RedirectResponse("/events", status_code=303)


async def home(request: Request) -> Response:
    return RedirectResponse("/runs", status_code=307)


def routes() -> list[Route]:
    return [
        Route("/", home),
        Route("/runs", runs_page),
        Route("/runs/{id}", run_page),
        Route("/pipelines", pipelines_page),
        Route("/pipelines/{id}", pipeline_page),
        Route("/sweeps/{id}", sweep_page),
        Route("/evals", evals_page),
        Route("/policies/{name}", evals_page),
        Route("/compare", compare_page),
        Route("/artifacts", artifacts_page),
        Route("/artifacts/{id:path}", artifact_page),
        Route("/events", events_page),
        Route("/events/audit", audit_page),
    ]
