"""The dashboard at 100k runs: API latency, a full page load in Chromium, and SSE delivery to 100 clients.

Fills database ``bench_web`` with 100,000 runs the way ``bench_status`` does
(RunSubmitted / RunStarted / RunFinished through ``projections.record``), starts
the real ``labctl serve`` as a subprocess, then measures, each beside its
peer in the same run:

1. ``GET /api/runs?limit=100`` (first page, and a page 500 pages deep by the
   cursor) over one keep-alive connection, p50/p99, vs. the same SQL run
   in-process on an open connection (the floor the API adds HTTP, JSON and a
   thread hop to);
2. the runs page loaded in headless Chromium (navigation start to the load
   event, HTML + CSS + script), median, vs. fetching the same HTML with
   urllib (the server's share);
3. SSE delivery: 100 clients hold ``/api/stream`` open; an event is appended
   and the time until every client has its frame is taken, p50/p99 over all
   deliveries, vs. a bare LISTEN on the ``NOTIFY`` the same append sends.

    PYTHONPATH=. python bench/bench_web.py [--quick] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_status import populate
from common import (
    bench_server,
    labctl_argv,
    machine_line,
    markdown_table,
    median,
    percentile,
    report_section,
    step_printer,
    verdict,
)

import events
import projections
from events import NewEvent
from events.types import RunSubmitted
from labctl.db import connect, ensure_schema
from labctl.web import api

DB = "bench_web"
HEADING = "Web dashboard"
CHROMIUM = "/usr/bin/chromium"


@dataclass(frozen=True)
class Sizes:
    runs: int
    requests: int
    page_loads: int
    clients: int
    appends: int


FULL = Sizes(runs=100_000, requests=300, page_loads=20, clients=100, appends=40)
QUICK = Sizes(runs=5_000, requests=60, page_loads=5, clients=20, appends=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api_times(port: int, paths: Sequence[str]) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for path in paths:
        start = time.perf_counter()
        conn.request("GET", path)
        res = conn.getresponse()
        body = res.read()
        out.append(time.perf_counter() - start)
        assert res.status == 200, body[:200]
    conn.close()
    return out


def page_loads(base: str, count: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{base}/runs")  # warm: the first load compiles the templates and caches the script
        for _ in range(count):
            page.goto(f"{base}/runs?limit=100", wait_until="load")
            ms = page.evaluate("() => performance.getEntriesByType('navigation')[0].loadEventEnd")
            out.append(float(ms) / 1000)
            assert page.locator("tr[data-run]").count() == 100
        browser.close()
    return out


async def sse_latencies(port: int, url: str, clients: int, appends: int) -> tuple[list[float], list[float]]:
    """Seconds from before each append's commit to each client having its frame; and to a bare LISTEN's wake-up."""
    arrived: dict[int, list[float]] = {}
    ready = 0

    async def client() -> None:
        nonlocal ready
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        await writer.drain()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # headers
        ready += 1
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                if line.startswith(b"id: "):
                    arrived.setdefault(int(line[4:]), []).append(time.perf_counter())
        finally:
            writer.close()

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    while ready < clients:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # every stream subscribed
    listener = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await listener.execute(f"LISTEN {events.CHANNEL}")
    notified: list[float] = []
    sent: dict[int, float] = {}
    latencies: list[float] = []
    with connect(url) as conn:
        for i in range(appends):
            event = RunSubmitted(
                run_id=f"run_sse{i}", name="sse", user="bench", executor="local", run_dir="/r", recipe={}
            )
            start = time.perf_counter()
            await asyncio.to_thread(projections.record, conn, [NewEvent(f"run-run_sse{i}", event, 0)])
            position = events.last_position(conn)
            sent[position] = start
            async for _ in listener.notifies(timeout=5):
                notified.append(time.perf_counter() - start)
                break
            deadline = time.perf_counter() + 10
            while len(arrived.get(position, [])) < clients and time.perf_counter() < deadline:
                await asyncio.sleep(0.001)
            assert len(arrived.get(position, [])) == clients, f"{len(arrived.get(position, []))} of {clients}"
            latencies += [t - start for t in arrived[position]]
            await asyncio.sleep(0.1)
    await listener.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return latencies, notified


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.runs:,} runs, fewer rounds")
    parser.add_argument("--write", action="store_true", help=f"replace the '## {HEADING}' section of RESULTS.md")
    opts = parser.parse_args(argv)
    sizes = QUICK if opts.quick else FULL
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    step = step_printer()

    with bench_server([DB], prefix="labctl-bench-web-") as srv, tempfile.TemporaryDirectory() as tmp:
        url = srv.url(DB)
        with connect(url) as conn:
            ensure_schema(conn)
            step(f"recording {sizes.runs:,} runs through projections.record")
            populate(conn, sizes.runs)
            first = api.runs_page(conn, api.RunsQuery(limit=100))
            cursor = first["next"]
            for _ in range(499 if not opts.quick else 20):
                cursor = api.runs_page(conn, api.RunsQuery(limit=100, after=cursor))["next"]
            deep = cursor
            sql_first, sql_deep = [], []
            for _ in range(sizes.requests):
                start = time.perf_counter()
                api.runs_page(conn, api.RunsQuery(limit=100))
                sql_first.append(time.perf_counter() - start)
                start = time.perf_counter()
                api.runs_page(conn, api.RunsQuery(limit=100, after=deep))
                sql_deep.append(time.perf_counter() - start)

        port = free_port()
        env = dict(os.environ, LABCTL_DATABASE_URL=url, LABCTL_HOME=str(Path(tmp) / "home"))
        env.pop("LABCTL_CLUSTER", None)
        server = subprocess.Popen(
            [*labctl_argv(), "serve", "--bind", f"127.0.0.1:{port}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert server.stdout is not None
            server.stdout.readline()
            base = f"http://127.0.0.1:{port}"
            step("API: /api/runs?limit=100, first page and 500 pages deep")
            api_times(port, ["/api/runs?limit=100"] * 20)  # warm the pool
            first_t = api_times(port, ["/api/runs?limit=100"] * sizes.requests)
            deep_t = api_times(port, [f"/api/runs?limit=100&after={deep}"] * sizes.requests)
            step("runs page in Chromium")
            html_t = []
            for _ in range(sizes.page_loads):
                start = time.perf_counter()
                with urllib.request.urlopen(f"{base}/runs?limit=100") as res:
                    res.read()
                html_t.append(time.perf_counter() - start)
            loads = page_loads(base, sizes.page_loads) if Path(CHROMIUM).exists() else []
            step(f"SSE: {sizes.clients} clients, {sizes.appends} appends")
            sse, notify = asyncio.run(sse_latencies(port, url, sizes.clients, sizes.appends))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)

    p99_first = percentile(first_t, 99)
    page_load = median(loads) if loads else float("nan")
    rows = [
        [
            "`GET /api/runs?limit=100` (first page) p50 / p99, ms (vs `api.runs_page` in-process)",
            f"{ms(median(first_t))} / {ms(p99_first)}",
            f"{ms(median(sql_first))} / {ms(percentile(sql_first, 99))}",
            f"{median(first_t) / median(sql_first):.1f}x",
            verdict(p99_first < 0.050, "p99 < 50 ms"),
        ],
        [
            "same, 500 pages deep by the cursor, p50 / p99, ms",
            f"{ms(median(deep_t))} / {ms(percentile(deep_t, 99))}",
            f"{ms(median(sql_deep))} / {ms(percentile(sql_deep, 99))}",
            f"{median(deep_t) / median(sql_deep):.1f}x",
            verdict(percentile(deep_t, 99) < 0.050, "p99 < 50 ms"),
        ],
        [
            "runs page (100 rows) full load in Chromium, median ms (vs its HTML over urllib)",
            ms(page_load),
            ms(median(html_t)),
            f"{page_load / median(html_t):.1f}x",
            verdict(page_load < 0.300, "< 300 ms"),
        ],
        [
            f"SSE append -> frame at each of {sizes.clients} clients, p50 / p99, ms (vs a bare LISTEN wake-up)",
            f"{ms(median(sse))} / {ms(percentile(sse, 99))}",
            f"{ms(median(notify))} / {ms(percentile(notify, 99))}",
            f"{median(sse) / median(notify):.1f}x",
            verdict(median(sse) < 0.050, "p50 < 50 ms"),
        ],
    ]
    body = (
        f"`bench/bench_web.py`: {sizes.runs:,} runs recorded as in `bench_status`; the real `labctl serve` "
        f"(uvicorn, psycopg_pool) as a subprocess on loopback. API: {sizes.requests} sequential requests on one "
        "keep-alive connection per case; the peer is the same `api.runs_page` call in-process on an open "
        f"connection. Page: median of {sizes.page_loads} loads of `/runs` in headless Chromium "
        "(navigation start to the load event: HTML, CSS, script; the event stream opens after). SSE: "
        f"{sizes.clients} clients on `/api/stream`, {sizes.appends} single-event appends 100 ms apart, each "
        "timed from before its commit to the frame read by each client; the peer is a LISTEN on the same "
        "NOTIFY in the benchmark process.\n\n"
        f"Machine: {machine_line(srv.describe())}; load average {os.getloadavg()[0]:.1f} while measuring "
        "(other sessions were running tests on the same 2 cores).\n\n"
        + markdown_table(["measure", "labctl", "peer", "ratio", "target"], rows)
    )
    report_section(HEADING, body, write=opts.write)


if __name__ == "__main__":
    main()
