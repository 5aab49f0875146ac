"""The web server: JSON API, Server-Sent Events with resume, the page, and `labctl serve` itself.

Real Postgres, real HTTP on an ephemeral port; the server runs in a thread
with its own event loop, as `labctl serve` runs it in the foreground.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

import projections
from events import NewEvent
from events.types import (
    PipelineCreated,
    RunFinished,
    RunPending,
    RunStarted,
    RunSubmitted,
    StageSpec,
)
from tests.conftest import labctl_bin, wait_for
from tests.webserver import DatabaseProxy, EventStream, running_server, seed_world
from tests.webserver import get as _get
from tests.webserver import get_json as _json


def _submitted(run_id: str, user: str = "alice", name: str = "train") -> RunSubmitted:
    return RunSubmitted(run_id=run_id, name=name, user=user, executor="local", run_dir=f"/runs/{run_id}", recipe={})


def _submit(conn: psycopg.Connection[Any], run_id: str, user: str = "alice") -> None:
    projections.record(conn, [NewEvent(f"run-{run_id}", _submitted(run_id, user), 0)])


def _finish(conn: psycopg.Connection[Any], run_id: str, exit_code: int = 0) -> None:
    state = "succeeded" if exit_code == 0 else "failed"
    projections.record(conn, [NewEvent(f"run-{run_id}", RunFinished(run_id=run_id, state=state, exit_code=exit_code))])


@pytest.fixture
def web(db_url: str) -> Iterator[str]:
    with running_server(db_url) as base:
        yield base


# --------------------------------------------------------------------- JSON API


def test_runs_api_returns_a_recorded_run_with_the_status_json_fields(web: str, conn: psycopg.Connection[Any]) -> None:
    _submit(conn, "run_a1")
    _finish(conn, "run_a1", exit_code=3)
    rows = _json(f"{web}/api/runs")["runs"]
    assert [(r["id"], r["recipe_name"], r["status"], r["exit_code"], r["submitted_by"]) for r in rows] == [
        ("run_a1", "train", "failed", 3, "alice")
    ]
    # the original's keys, plus ours
    assert {"recipe_hash", "job_id", "run_dir", "repo", "created_at", "finished_at", "duration_secs"} <= rows[0].keys()
    assert {"pipeline_id", "stage_name", "is_terminal", "executor", "reason"} <= rows[0].keys()
    assert rows[0]["is_terminal"] is True


def test_runs_api_filters_by_user_and_state_newest_first_up_to_the_limit(
    web: str, conn: psycopg.Connection[Any]
) -> None:
    for i in range(4):
        _submit(conn, f"run_b{i}", user="bob" if i % 2 else "alice")
    _finish(conn, "run_b3")

    def ids(query: str) -> list[str]:
        return [r["id"] for r in _json(f"{web}/api/runs{query}")["runs"]]

    assert ids("") == ["run_b3", "run_b2", "run_b1", "run_b0"]
    assert ids("?user=bob") == ["run_b3", "run_b1"]
    assert ids("?user=bob&state=submitted") == ["run_b1"]
    assert ids("?limit=2") == ["run_b3", "run_b2"]


def test_run_api_shows_one_run_like_labctl_show(web: str, conn: psycopg.Connection[Any]) -> None:
    _submit(conn, "run_c1")
    shown = _json(f"{web}/api/runs/run_c1")
    assert shown["run"]["id"] == "run_c1" and shown["run"]["status"] == "submitted"
    assert (
        shown["inputs"] == []
        and shown["outputs"] == []
        and shown["run"]["log"] == "/runs/run_c1/.lab/train_local-run_c1.log"
    )
    assert shown["eval_series"] == [] and shown["tracking"] == {"wandb": None}
    assert [t["state"] for t in shown["timeline"]] == ["submitted"]
    assert _json(f"{web}/api/runs/c1")["run"]["id"] == "run_c1"  # an unambiguous prefix, as in the CLI


def test_unknown_run_id_is_a_404_json_error(web: str) -> None:
    status, ctype, body = _get(f"{web}/api/runs/run_nope")
    assert (status, ctype) == (404, "application/json")
    assert json.loads(body) == {"error": "no run 'run_nope'"}


def test_a_bad_parameter_is_a_400_json_error_naming_it(web: str) -> None:
    status, _, body = _get(f"{web}/api/runs?limit=lots")
    assert status == 400
    assert "limit" in json.loads(body)["error"]


def test_unknown_path_is_a_404_json_error(web: str) -> None:
    status, ctype, body = _get(f"{web}/api/nothing")
    assert (status, ctype) == (404, "application/json") and "error" in json.loads(body)


def test_pipelines_api_lists_stages_in_order_with_their_run_states(web: str, conn: psycopg.Connection[Any]) -> None:
    stages = [StageSpec(name="prep", run_ids=["run_p1"]), StageSpec(name="train", run_ids=["run_p2"], parents=["prep"])]
    created = PipelineCreated(pipeline_id="pipeline_x", name="demo", user="alice", stages=stages)
    projections.record(conn, [NewEvent("pipeline-pipeline_x", created, 0)])
    for run_id, stage, parents in (("run_p1", "prep", []), ("run_p2", "train", ["prep"])):
        pending = RunPending(
            run_id=run_id,
            name=stage,
            user="alice",
            executor="local",
            run_dir=f"/runs/{run_id}",
            recipe={},
            pipeline_id="pipeline_x",
            stage_name=stage,
            parents=parents,
        )
        projections.record(conn, [NewEvent(f"run-{run_id}", pending, 0)])
    projections.record(conn, [NewEvent("run-run_p1", RunStarted(run_id="run_p1", started_at=datetime.now(UTC)))])
    [pipeline] = _json(f"{web}/api/pipelines")["pipelines"]
    assert (pipeline["id"], pipeline["name"], pipeline["status"], pipeline["user"]) == (
        "pipeline_x",
        "demo",
        "running",
        "alice",
    )
    assert [(s["name"], s["status"], s["parents"]) for s in pipeline["stages"]] == [
        ("prep", "running", []),
        ("train", "created", ["prep"]),
    ]
    assert pipeline["stages"][0]["runs"] == [{"id": "run_p1", "status": "running", "exit_code": None}]


def test_events_api_pages_the_log_like_labctl_events_json(web: str, conn: psycopg.Connection[Any]) -> None:
    for i in range(3):
        _submit(conn, f"run_e{i}")
    everything = _json(f"{web}/api/events")
    assert [e["stream"] for e in everything] == ["run-run_e0", "run-run_e1", "run-run_e2"]
    assert {"position", "stream", "version", "type", "data", "meta", "recorded_at"} <= everything[0].keys()
    first = everything[0]["position"]
    assert [e["stream"] for e in _json(f"{web}/api/events?after={first}&limit=1")] == ["run-run_e1"]
    assert [e["stream"] for e in _json(f"{web}/api/events?tail=2")] == ["run-run_e1", "run-run_e2"]


# ---------------------------------------------------------------- event stream


def test_stream_delivers_an_event_appended_after_connecting(web: str, conn: psycopg.Connection[Any]) -> None:
    _submit(conn, "run_old")
    stream = EventStream(web)
    try:
        _submit(conn, "run_new")
        position, event = stream.next()
        assert (event["stream"], event["type"], event["data"]["run_id"]) == ("run-run_new", "RunSubmitted", "run_new")
        assert position == event["position"]
    finally:
        stream.close()


def test_reconnecting_with_last_event_id_yields_exactly_the_missed_events(
    web: str, conn: psycopg.Connection[Any]
) -> None:
    stream = EventStream(web)
    _submit(conn, "run_r1")
    seen, _ = stream.next()
    stream.close()
    _finish(conn, "run_r1")
    _submit(conn, "run_r2")  # both while the browser was away

    again = EventStream(web, last_event_id=seen)
    try:
        missed = [again.next()[1] for _ in range(2)]
        assert [(e["stream"], e["type"]) for e in missed] == [
            ("run-run_r1", "RunFinished"),
            ("run-run_r2", "RunSubmitted"),
        ]
        assert missed[0]["position"] > seen
        _submit(conn, "run_r3")
        position, live = again.next()  # the next one is live, with nothing repeated in between
        assert (live["stream"], position) == ("run-run_r3", live["position"])
        assert position > missed[1]["position"]
    finally:
        again.close()


def test_last_event_id_wins_over_the_after_parameter_of_the_original_url(
    web: str, conn: psycopg.Connection[Any]
) -> None:
    for i in range(3):
        _submit(conn, f"run_w{i}")
    positions = [e["position"] for e in _json(f"{web}/api/events")]
    stream = EventStream(web, after=0, last_event_id=positions[1])
    try:
        assert stream.next()[0] == positions[2]
    finally:
        stream.close()


# ------------------------------------------------------------------------ page


def test_page_is_self_contained_html_with_its_title(web: str) -> None:
    status, ctype, body = _get(f"{web}/")  # redirected to the runs page
    page = body.decode()
    assert (status, ctype) == (200, "text/html; charset=utf-8")
    assert "<title>Runs — labctl</title>" in page
    assert '<script src="/static/live.js"' in page
    script = _get(f"{web}/static/live.js")[2].decode()
    assert "new EventSource(" in script and "/api/stream" in script
    assert "http://" not in page + script and "https://" not in page + script  # no CDN


# ----------------------------------------------------------------- the command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_labctl_serve_listens_where_told_and_stops_cleanly_on_a_signal(
    labctl_env: dict[str, str], sig: signal.Signals
) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [*labctl_bin(), "serve", "--bind", f"127.0.0.1:{port}"],
        env=labctl_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"serving http://127.0.0.1:{port}/  (Ctrl-C to stop)"
        stream = EventStream(f"http://127.0.0.1:{port}")  # an open stream must not hold up the shutdown
        assert _get(f"http://127.0.0.1:{port}/")[0] == 200
        began = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() - began < 5
        stream.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_labctl_serve_refuses_a_malformed_bind(labctl_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [*labctl_bin(), "serve", "--bind", "localhost"], env=labctl_env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "expected HOST:PORT" in proc.stderr


# ------------------------------------------------------- a small world to browse


def _every_page(web: str, query: str, limit: int) -> list[str]:
    """The run ids of ``/api/runs?QUERY``, page after page by the cursor."""
    seen: list[str] = []
    url = f"{web}/api/runs?{query}&limit={limit}"
    while True:
        page = _json(url)
        seen += [r["id"] for r in page["runs"]]
        if page["next"] is None:
            return seen
        url = f"{web}/api/runs?{query}&limit={limit}&after={page['next']}"


def test_runs_are_paged_by_cursor_without_repeats_or_gaps(web: str, conn: psycopg.Connection[Any]) -> None:
    for i in range(7):
        _submit(conn, f"run_g{i}")
    assert _every_page(web, "", 3) == [f"run_g{i}" for i in reversed(range(7))]
    by_name = _json(f"{web}/api/runs?sort=name&order=asc&limit=2")
    assert [r["id"] for r in _json(f"{web}/api/runs?sort=name&order=asc&limit=5&after={by_name['next']}")["runs"]] == [
        r["id"] for r in _json(f"{web}/api/runs?sort=name&order=asc&limit=7")["runs"]
    ][2:7]


def test_runs_sort_by_duration_pages_without_repeats_or_gaps_unfinished_runs_longest(
    web: str, conn: psycopg.Connection[Any]
) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    seconds = {"run_d0": 10, "run_d1": 30, "run_d2": 20, "run_d3": 30, "run_d4": None, "run_d5": None}
    for run_id, took in seconds.items():
        _submit(conn, run_id)
        if run_id == "run_d5":
            continue  # still queued
        started = RunStarted(run_id=run_id, started_at=t0)
        projections.record(conn, [NewEvent(f"run-{run_id}", started, 1)])
        if took is not None:
            end = RunFinished(run_id=run_id, state="succeeded", started_at=t0, finished_at=t0 + timedelta(seconds=took))
            projections.record(conn, [NewEvent(f"run-{run_id}", end, 2)])
    # longest first; the unfinished ones are still going, so longest of all; ties newest first
    longest_first = ["run_d5", "run_d4", "run_d3", "run_d1", "run_d2", "run_d0"]
    assert _every_page(web, "sort=duration", 2) == longest_first
    assert _every_page(web, "sort=duration&order=asc", 2) == longest_first[::-1]
    shown = {r["id"]: r["duration_secs"] for r in _json(f"{web}/api/runs?sort=duration")["runs"]}
    assert [shown[r] for r in longest_first[2:]] == [30.0, 30.0, 20.0, 10.0]
    # the page sorts the same way, and offers the sort
    status, _, body = _get(f"{web}/runs?sort=duration&order=asc")
    assert status == 200
    html = body.decode()
    assert [html.index(f'data-run="{r}"') for r in longest_first[::-1]] == sorted(
        html.index(f'data-run="{r}"') for r in longest_first
    )
    assert '<option value="duration" selected>' in html
    # its header sorts by it, the other way round when it already does, from the first page
    assert '<th aria-sort="ascending"><a class="sort" href="?sort=duration&amp;order=desc">duration ↑</a></th>' in html
    # a cursor belongs to its sort
    other = _json(f"{web}/api/runs?limit=2")["next"]
    status, ctype, body = _get(f"{web}/api/runs?sort=duration&after={other}")
    assert (status, ctype) == (400, "application/json") and "after" in json.loads(body)["error"]


def test_with_the_database_away_the_api_answers_json_503_and_pages_an_error_page_then_recover(db_url: str) -> None:
    proxy = DatabaseProxy(db_url)
    try:
        with running_server(proxy.url) as base:
            assert _get(f"{base}/api/runs")[0] == 200
            proxy.stop()  # the server's connections are cut and new ones refused
            status, ctype, body = _get(f"{base}/api/runs")
            assert (status, ctype) == (503, "application/json"), body
            # the reason, not "no connection free"
            assert json.loads(body)["error"].startswith("database unavailable: cannot reach the database"), body
            status, ctype, body = _get(f"{base}/runs")
            assert status == 503 and ctype.startswith("text/html"), (status, ctype, body[:200])
            page = body.decode()
            assert "<h1>503</h1>" in page and "database unavailable: cannot reach the database" in page, page
            proxy.start()
            wait_for(lambda: _get(f"{base}/api/runs")[0] == 200, "the server to use the database again")
            assert _get(f"{base}/runs")[0] == 200
    finally:
        proxy.close()


def test_runs_filter_by_recipe_pipeline_and_text(web: str, conn: psycopg.Connection[Any]) -> None:
    seed_world(conn)
    assert [r["id"] for r in _json(f"{web}/api/runs?recipe=use")["runs"]] == ["run_u1"]
    assert [r["id"] for r in _json(f"{web}/api/runs?q=T2")["runs"]] == ["run_t2"]  # case-insensitive
    assert _json(f"{web}/api/runs?q=%25")["runs"] == []  # % is a character, not a wildcard
    assert _json(f"{web}/api/runs?pipeline=pipeline_none")["runs"] == []
    [t1] = [r for r in _json(f"{web}/api/runs?recipe=train")["runs"] if r["id"] == "run_t1"]
    assert t1["params"] == {"lr": 0.1} and t1["metrics"] == {"loss": 1.0, "accuracy": 0.7}


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=100000", "sort=bogus", "order=sideways", "after=%25%25notacursor", "user=" + "x" * 300],
)
def test_bad_runs_query_values_are_400_never_500(web: str, query: str) -> None:
    status, ctype, body = _get(f"{web}/api/runs?{query}")
    assert (status, ctype) == (400, "application/json"), body
    assert set(json.loads(body)) == {"error"}


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/run_nope",
        "/api/runs/run_nope/log",
        "/api/runs/run_nope/events",
        "/api/recipes/nope",
        "/api/pipelines/pipeline_nope",
        "/api/artifacts/artifact_nope",
        "/api/artifacts/artifact_nope/lineage",
        "/api/policies/nope",
        "/api/sweeps/sweep_nope",
        "/api/compare?ids=run_nope",
        "/api/runs/run_nope/log/stream",
    ],
)
def test_an_unknown_id_is_a_404_json_error(web: str, path: str) -> None:
    status, ctype, body = _get(web + path)
    assert (status, ctype) == (404, "application/json"), body
    assert set(json.loads(body)) == {"error"}


@pytest.mark.parametrize(
    "path",
    [
        "/api/events?after=-1",
        "/api/events?after=99999999999999999999999",
        "/api/events?tail=0",
        "/api/events?limit=lots",
        "/api/runs/run_t1/log?tail=0",
        "/api/recipes/train/history?limit=1000",
        "/api/compare?ids=" + ",".join(f"run_{i}" for i in range(11)),
        "/api/stream?after=abc",
        "/api/artifacts?after=zzz",
        "/api/evals?limit=-5",
        "/runs?limit=x",
        "/events?tail=-1",
    ],
)
def test_a_bad_query_value_is_a_400(web: str, conn: psycopg.Connection[Any], path: str) -> None:
    seed_world(conn)
    status, _, body = _get(web + path)
    assert status == 400, body


def test_run_api_has_timeline_outputs_with_aliases_evals_and_a_safe_tracking_link(
    web: str, conn: psycopg.Connection[Any]
) -> None:
    seed_world(conn)
    t1 = _json(f"{web}/api/runs/run_t1")
    assert [(o["artifact_id"], o["step"], o["aliases"]) for o in t1["outputs"]] == [
        ("artifact_run_t1_1", 1, []),
        ("artifact_run_t1_2", 2, ["alice/best"]),
    ]
    [series] = t1["eval_series"]
    assert (series["policy_id"], series["metric_name"], series["latest_step"]) == ("every-epoch", "accuracy", 2)
    assert [p["value"] for p in series["points"]] == [0.6, 0.7]
    assert t1["metrics"] == [{"name": "loss", "steps": [1, 2], "values": [2.0, 1.0]}]
    assert t1["tracking"] == {"wandb": None}  # a javascript: URL never becomes a link
    assert _json(f"{web}/api/runs/run_t2")["tracking"] == {"wandb": {"url": "https://wandb.ai/lab/p/runs/x"}}
    assert [e["type"] for e in _json(f"{web}/api/runs/run_t1/events")["events"]] == [
        "RunSubmitted",
        "OutputLinked",
        "OutputLinked",
    ]


def test_compare_puts_params_side_by_side_and_overlays_eval_and_logged_curves(
    web: str, conn: psycopg.Connection[Any]
) -> None:
    seed_world(conn)
    body = _json(f"{web}/api/compare?ids=run_t1,run_t2")
    assert [r["id"] for r in body["runs"]] == ["run_t1", "run_t2"]
    assert body["metrics"][0] == "accuracy"  # measured by both runs: the default to plot
    [accuracy] = [s for s in body["series_by_metric"] if s["metric_name"] == "accuracy"]
    assert [(t["run_id"], [p["step"] for p in t["points"]]) for t in accuracy["runs"]] == [
        ("run_t1", [1, 2]),
        ("run_t2", [1]),
    ]
    assert "loss" in body["metrics"]
    assert [d["params"] for d in body["details"]] == [{"lr": 0.1}, {"lr": 0.5}]
    page = _get(f"{web}/compare?ids=run_t1&ids=run_t2")[2].decode()
    assert 'class="differs"><th>lr</th>' in page and "<svg" in page


def test_artifact_api_shows_producer_consumers_and_lineage_both_ways(web: str, conn: psycopg.Connection[Any]) -> None:
    seed_world(conn)
    shown = _json(f"{web}/api/artifacts/artifact_run_t1_2")
    assert shown["artifact"]["aliases"] == ["alice/best"] and shown["producer"]["id"] == "run_t1"
    assert [(c["id"], c["input_role"]) for c in shown["consumers"]] == [("run_u1", "model")]
    assert _json(f"{web}/api/artifacts/alice/best")["artifact"]["id"] == "artifact_run_t1_2"  # by alias
    lineage = _json(f"{web}/api/artifacts/artifact_run_t1_2/lineage")
    assert lineage["root_id"] == "artifact_run_t1_2"
    assert {r["id"] for r in lineage["runs"]} == {"run_t1", "run_u1"}
    assert {(e["from"], e["to"], e["kind"]) for e in lineage["edges"]} == {
        ("run_t1", "artifact_run_t1_2", "produces"),
        ("artifact_run_t1_2", "run_u1", "consumed_by"),
    }
    listed = _json(f"{web}/api/artifacts?kind=checkpoint&limit=2")
    assert len(listed["artifacts"]) == 2 and listed["next"] is not None
    rest = _json(f"{web}/api/artifacts?kind=checkpoint&limit=2&after={listed['next']}")
    assert len(rest["artifacts"]) == 1 and rest["next"] is None


def test_evals_policies_and_recipes_answer_like_the_original(web: str, conn: psycopg.Connection[Any]) -> None:
    seed_world(conn)
    assert len(_json(f"{web}/api/evals")["evals"]) == 3
    [card] = _json(f"{web}/api/policies")["policies"]
    assert (card["name"], card["primary_metric"], card["total_count"]) == ("every-epoch", "accuracy", 3)
    policy = _json(f"{web}/api/policies/every-epoch")
    assert policy["policy_name"] == "every-epoch" and len(policy["requests"]) == 3
    assert {r["id"] for r in policy["runs"]} == {"run_t1", "run_t2"}
    recipe = _json(f"{web}/api/recipes/train")
    assert recipe["recipe_name"] == "train" and recipe["metrics"][0] == "accuracy"
    history = _json(f"{web}/api/recipes/train/history?limit=1")
    assert history["recipe_name"] == "train" and [h["status"] for h in history["history"]] == ["submitted"]
    cluster = _json(f"{web}/api/cluster")
    assert cluster["head"]["position"] > 0 and len(cluster["head"]["hash"]) == 64


def test_run_log_api_tails_the_file_and_its_stream_follows_it(
    web: str, conn: psycopg.Connection[Any], tmp_path: Any
) -> None:
    run_dir = tmp_path / "run_l1"
    run_dir.mkdir()
    (run_dir / "log.txt").write_text("".join(f"line {i}\n" for i in range(300)))
    projections.record(
        conn,
        [
            NewEvent(
                "run-run_l1",
                RunSubmitted(
                    run_id="run_l1", name="log", user="alice", executor="local", run_dir=str(run_dir), recipe={}
                ),
                0,
            )
        ],
    )
    tail = _json(f"{web}/api/runs/run_l1/log?tail=2")
    assert tail["lines"] == ["line 298", "line 299"] and tail["truncated"] is True
    stream = EventStream(web, path="/api/runs/run_l1/log/stream")
    try:
        with (run_dir / "log.txt").open("a") as f:
            f.write("new one\nnew two\n")
        _, lines = stream.next("lines")
        assert lines == ["new one", "new two"]
    finally:
        stream.close()


def test_every_page_renders_for_the_world(web: str, conn: psycopg.Connection[Any]) -> None:
    seed_world(conn)
    for path in (
        "/runs",
        "/runs/run_t1",
        "/pipelines",
        "/evals",
        "/policies/every-epoch",
        "/compare?ids=run_t1,run_t2",
        "/artifacts",
        "/artifacts/artifact_run_t1_2",
        "/artifacts/alice/best",
        "/events",
        "/events?type=RunSubmitted",
        "/runs?state=submitted&sort=name",
    ):
        status, ctype, body = _get(web + path)
        assert (status, ctype) == (200, "text/html; charset=utf-8"), (path, body[:300])
    assert b"<svg" in _get(f"{web}/runs/run_t1")[2]  # its eval and loss curves
    status, _, body = _get(f"{web}/runs/run_nope")
    assert status == 404 and b"no run" in body
