"""The web server: JSON API, Server-Sent Events with resume, the page, and `labctl serve` itself.

Real Postgres, real HTTP on an ephemeral port; the server runs in a thread
with its own event loop, as `labctl serve` runs it in the foreground.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

import projections
from events import NewEvent
from events.types import PipelineCreated, RunFinished, RunPending, RunStarted, RunSubmitted, StageSpec
from labctl.web import serve
from tests.conftest import labctl_bin


def _submitted(run_id: str, user: str = "alice", name: str = "train") -> RunSubmitted:
    return RunSubmitted(run_id=run_id, name=name, user=user, executor="local", run_dir=f"/runs/{run_id}", recipe={})


def _submit(conn: psycopg.Connection[Any], run_id: str, user: str = "alice") -> None:
    projections.record(conn, [NewEvent(f"run-{run_id}", _submitted(run_id, user), 0)])


def _finish(conn: psycopg.Connection[Any], run_id: str, exit_code: int = 0) -> None:
    state = "succeeded" if exit_code == 0 else "failed"
    projections.record(conn, [NewEvent(f"run-{run_id}", RunFinished(run_id=run_id, state=state, exit_code=exit_code))])


@pytest.fixture
def web(db_url: str) -> Iterator[str]:
    """The base URL of a server on an ephemeral port, stopped (and checked stopped) after the test."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        box["loop"] = asyncio.get_running_loop()
        box["stop"] = stop = asyncio.Event()

        def started(host: str, port: int) -> None:
            box["port"] = port
            ready.set()

        await serve(db_url, "127.0.0.1", 0, stop=stop, started=started, poll_interval=0.2)

    def thread() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            box["error"] = exc
            ready.set()

    t = threading.Thread(target=thread, name="labctl-web", daemon=True)
    t.start()
    assert ready.wait(20), "the server did not start"
    if "error" in box:
        raise box["error"]
    yield f"http://127.0.0.1:{box['port']}"
    box["loop"].call_soon_threadsafe(box["stop"].set)
    t.join(10)
    assert not t.is_alive(), "the server did not stop"
    assert "error" not in box, box.get("error")


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as res:
            return res.status, res.headers["Content-Type"], res.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def _json(url: str) -> Any:
    status, ctype, body = _get(url)
    assert status == 200, body
    assert ctype == "application/json"
    return json.loads(body)


class EventStream:
    """A Server-Sent Events client reading ``event: log`` frames (what EventSource does)."""

    def __init__(self, base: str, *, last_event_id: int | None = None, after: int | None = None) -> None:
        url = urlsplit(base)
        self.conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.conn.request("GET", "/api/stream" + (f"?after={after}" if after is not None else ""), headers=headers)
        self.res = self.conn.getresponse()
        assert self.res.status == 200
        assert self.res.getheader("Content-Type") == "text/event-stream"

    def next(self) -> tuple[int, dict[str, Any]]:
        """The next event's id and JSON data (comments and bare ``retry:`` frames skipped)."""
        fields: dict[str, str] = {}
        while True:
            line = self.res.readline().decode()
            assert line, "the stream ended"
            line = line.rstrip("\n")
            if line == "":
                if fields.get("event") == "log":
                    return int(fields["id"]), json.loads(fields["data"])
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")

    def close(self) -> None:
        self.conn.close()


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
    assert shown["inputs"] == [] and shown["outputs"] == [] and shown["run"]["log"] == "/runs/run_c1/log.txt"
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
