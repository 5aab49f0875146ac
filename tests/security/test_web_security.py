"""Issue 13 item 7: the dashboard is safe to leave running.

Loopback unless a token is set (and then it is required, and the bind warns);
the Host header is checked (DNS rebinding); every user-supplied string is
escaped; GET only; connections and event streams are bounded, a client that
stops reading is cut off, catch-up and event sizes are bounded.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import projections
from events import NewEvent
from events.types import RunSubmitted
from labctl.web.stream import MAX_EVENT_BYTES, StreamLimits
from tests.conftest import labctl_bin, run_cli, wait_for
from tests.webserver import EventStream, get, get_json, running_server

XSS = "<script>alert(1)</script>"


def _submit(conn: psycopg.Connection[Any], run_id: str, name: str = "train", **recipe: Any) -> None:
    event = RunSubmitted(
        run_id=run_id, name=name, user="alice", executor="local", run_dir=f"/runs/{run_id}", recipe=recipe
    )
    projections.record(conn, [NewEvent(f"run-{run_id}", event, 0)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raw_get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


@pytest.fixture
def web(db_url: str) -> Iterator[str]:
    with running_server(db_url) as base:
        yield base


# ---------------------------------------------------------------- escaping


def test_a_run_named_like_a_script_renders_as_text_on_every_page(web: str, conn: psycopg.Connection[Any]) -> None:
    _submit(conn, "run_x1", name=XSS, params={XSS: XSS}, command=[XSS])
    for path in ("/runs", "/runs/run_x1", "/events", f"/runs?q={XSS}", "/compare?ids=run_x1"):
        status, _, body = get(web + path)
        page = body.decode()
        assert status == 200, (path, page[:200])
        assert XSS not in page, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path


def test_an_error_page_escapes_the_id_it_names(web: str) -> None:
    status, _, body = get(f"{web}/runs/{XSS.replace('/', '%2F')}")
    assert status == 404
    assert b"<script>" not in body


def test_every_answer_carries_headers_that_stop_sniffing_framing_and_inline_scripts(web: str) -> None:
    conn = http.client.HTTPConnection(web.removeprefix("http://").split(":")[0], int(web.rsplit(":", 1)[1]), timeout=10)
    for path in ("/runs", "/api/runs", "/api/nothing"):
        conn.request("GET", path)
        res = conn.getresponse()
        res.read()
        assert res.getheader("X-Content-Type-Options") == "nosniff", path
        assert res.getheader("X-Frame-Options") == "DENY", path
        assert "script-src 'self'" in (res.getheader("Content-Security-Policy") or ""), path
    conn.close()


# ---------------------------------------------------------- what it answers


def test_only_get_is_answered(web: str) -> None:
    port = int(web.rsplit(":", 1)[1])
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(method, "/api/runs", body=b"{}")
        res = conn.getresponse()
        assert res.status == 405, method
        assert "error" in json.loads(res.read())
        conn.close()


def test_a_page_reached_under_a_foreign_host_name_is_refused(web: str, conn: psycopg.Connection[Any]) -> None:
    """DNS rebinding: evil.example resolving to 127.0.0.1 must not let its page read the API."""
    _submit(conn, "run_h1")
    port = int(web.rsplit(":", 1)[1])
    status, body = _raw_get(port, "/api/runs", {"Host": f"evil.example:{port}"})
    assert status == 400 and b"run_h1" not in body
    assert _raw_get(port, "/api/runs", {"Host": "evil.example"})[0] == 400
    assert _raw_get(port, "/api/runs", {"Host": "[::2]:80"})[0] == 400
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", "LOCALHOST"):
        assert _raw_get(port, "/api/runs", {"Host": host})[0] == 200, host


def test_a_token_is_required_when_one_is_set_and_the_browser_keeps_it_in_a_cookie(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    _submit(conn, "run_k1")
    token = "s3cret-token-0123456789"
    with running_server(db_url, token=token) as base:
        port = int(base.rsplit(":", 1)[1])
        status, body = _raw_get(port, "/api/runs", {})
        assert status == 401 and b"run_k1" not in body
        assert _raw_get(port, "/api/runs", {"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
        assert _raw_get(port, "/api/stream", {})[0] == 401
        assert _raw_get(port, "/api/runs", {"Authorization": f"Bearer {token}"})[0] == 200
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", f"/runs?token={token}&state=submitted")
        res = c.getresponse()
        res.read()
        assert res.status == 303 and res.getheader("Location") == "/runs?state=submitted"  # the token leaves the URL
        cookie = res.getheader("Set-Cookie") or ""
        assert cookie.startswith(f"labctl_token={token}") and "HttpOnly" in cookie and "SameSite=strict" in cookie
        c.close()
        status, body = _raw_get(port, "/runs?state=submitted", {"Cookie": f"labctl_token={token}"})
        assert status == 200 and b"run_k1" in body


def test_serve_refuses_a_non_loopback_bind_without_a_token(labctl_env: dict[str, str]) -> None:
    env = {k: v for k, v in labctl_env.items() if k != "LABCTL_WEB_TOKEN"}
    proc = run_cli(env, "serve", "--bind", f"0.0.0.0:{_free_port()}", timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a token" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_refuses_a_short_token(labctl_env: dict[str, str]) -> None:
    proc = run_cli(labctl_env, "serve", "--bind", f"127.0.0.1:{_free_port()}", "--token", "short", timeout=60)
    assert proc.returncode == 2 and "16 printable characters" in proc.stderr


def test_serve_on_all_interfaces_with_a_token_warns_and_requires_it(labctl_env: dict[str, str]) -> None:
    port = _free_port()
    token = "0123456789abcdef0123"
    proc = subprocess.Popen(
        [*labctl_bin(), "serve", "--bind", f"0.0.0.0:{port}"],
        env={**labctl_env, "LABCTL_WEB_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().strip() == f"serving http://0.0.0.0:{port}/?token={token}  (Ctrl-C to stop)"
        assert proc.stderr.readline().startswith("warning: serving on 0.0.0.0, reachable from other machines")
        assert _raw_get(port, "/api/runs", {})[0] == 401
        assert _raw_get(port, "/api/runs", {"Authorization": f"Bearer {token}"})[0] == 200
        assert _raw_get(port, "/api/runs", {"Authorization": f"Bearer {token}", "Host": "evil.example"})[0] == 400
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ------------------------------------------------------------------ bounds


def test_event_streams_beyond_the_cap_are_refused_until_one_closes(db_url: str) -> None:
    with running_server(db_url, limits=StreamLimits(max_subscribers=3)) as base:
        streams = [EventStream(base) for _ in range(3)]
        assert all(s.status == 200 for s in streams)
        refused = EventStream(base)
        assert refused.status == 503 and "too many" in json.loads(refused.res.read())["error"]
        refused.close()
        streams.pop().close()
        wait_for(lambda: get_json(f"{base}/api/cluster")["open_streams"] == 2, "the closed stream to be let go")
        again = EventStream(base)
        assert again.status == 200
        for s in [*streams, again]:
            s.close()


def test_connections_beyond_the_cap_get_503_not_a_hang(db_url: str) -> None:
    with running_server(db_url, max_connections=4) as base:
        held = [EventStream(base) for _ in range(4)]
        status, ctype, body = get(f"{base}/api/runs")
        assert (status, ctype) == (503, "application/json") and "busy" in json.loads(body)["error"], body
        status, ctype, body = get(f"{base}/runs")  # a page says it as a page
        assert status == 503 and ctype.startswith("text/html") and b"<h1>503</h1>" in body, body[:300]
        for s in held:
            s.close()
        wait_for(lambda: get(f"{base}/api/runs")[0] == 200, "a free connection")


def _rss_kb() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_clients_that_stop_reading_are_cut_off_and_memory_stays_bounded(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """40 clients ask to catch up on a 60 MB log and never read: the server holds little and drops them."""
    blob = "x" * 30_000
    for i in range(0, 2000, 200):
        batch = []
        for j in range(i, i + 200):
            event = RunSubmitted(
                run_id=f"run_m{j}", name="m", user="alice", executor="local", run_dir="/r", recipe={"blob": blob}
            )
            batch.append(NewEvent(f"run-run_m{j}", event, 0))
        projections.record(conn, batch)
    with running_server(db_url, limits=StreamLimits(write_timeout=2.0)) as base:
        port = int(base.rsplit(":", 1)[1])
        before = _rss_kb()
        sockets = []
        for _ in range(40):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /api/stream?after=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
            sockets.append(s)
        wait_for(lambda: get_json(f"{base}/api/cluster")["open_streams"] == 40, "40 streams to open", timeout=20)
        peak = before
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            peak = max(peak, _rss_kb())
            if get_json(f"{base}/api/cluster")["open_streams"] == 0:
                break
            time.sleep(0.1)
        assert get_json(f"{base}/api/cluster")["open_streams"] == 0, "non-reading clients were not cut off"
        assert (peak - before) < 150_000, f"memory grew by {(peak - before) // 1024} MB"
        for s in sockets:
            s.close()
        # A reading client still gets everything.
        stream = EventStream(base, after=0)
        assert stream.next()[1]["data"]["run_id"] == "run_m0"
        stream.close()


def test_an_oversized_event_reaches_the_stream_as_a_stub_that_names_it(web: str, conn: psycopg.Connection[Any]) -> None:
    stream = EventStream(web)
    try:
        _submit(conn, "run_big", blob="y" * (MAX_EVENT_BYTES * 2))
        position, stub = stream.next()
        assert stub["truncated"] is True and stub["type"] == "RunSubmitted" and stub["position"] == position
        assert stub["bytes"] > MAX_EVENT_BYTES
        [full] = get_json(f"{web}/api/events?after={position - 1}&limit=1")
        assert full["data"]["recipe"]["blob"] == "y" * (MAX_EVENT_BYTES * 2)
    finally:
        stream.close()
