"""Cost curves from 10k to 10M events: lookups should stay flat, full scans grow linearly.

For each size, database ``bench_scale`` is filled with a realistic log written
by the store's own batched append (no inline projections): runs of 50 users
(submitted, started, finished; a failed one in ten; among the newest 5,000
runs, 1% left queued and 1% running, as on a cluster whose queue is bounded
by its size, not by the lab's history), their checkpoints (ArtifactRegistered + OutputLinked), metrics
ingested from ``.lab/metrics.jsonl`` (MetricsLogged), two-stage pipelines,
sweeps and evals of checkpoints. Then, on the same server:

* ``replay`` end to end (rebuild every read model, swap it in), events/s, and
  this process's peak resident memory while it ran (and while the full audit ran);
* lookups, p50 of 15 in-process calls on an open connection: ``status`` of
  one user (``runs.status_rows``), ``show`` of one run, ``log`` of one run
  (what ``labctl log`` reads: the run found by an id prefix, then where its
  log is), ``history`` of one run, ``lineage`` of one checkpoint, the web
  API's runs page (``labctl.web.api.runs_page``), and the dashboard's runs
  page as HTML (``GET /runs?user=``, the real Starlette app called in this
  process, so database, template and middleware, without a socket);
* a cold ``replay --until`` the middle of the log (the world as it was then,
  built into a schema of its own), then dropped;
* ``audit verify --full`` (whole chain + read models vs. a rebuild) and the
  chain alone, events/s, vs. a bare server-side scan of the same columns;
  then 1,000 more events and an incremental ``audit verify`` (from the
  checkpoint the full one recorded);
* the database size on disk.

    PYTHONPATH=. python bench/bench_scale.py --sizes 10k,100k,1M [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import bench_server, machine_line, markdown_table, median, report_section, step_printer, text_table

import projections
from events import EventMeta, NewEvent, append_batch, verify
from events.types import (
    ArtifactRegistered,
    EvalRecorded,
    EvalRequested,
    InputRef,
    MetricPoint,
    MetricsLogged,
    OutputLinked,
    OutputSpec,
    PipelineCreated,
    RunFinished,
    RunPending,
    RunStarted,
    RunSubmitted,
    StageSpec,
    SweepCreated,
)
from labctl import eventlog, lineage, maintenance, runs
from labctl.db import connect, ensure_schema

DB = "bench_scale"
HEADING = "Scale: 10k to 10M events"
USERS = [f"user{i:02d}" for i in range(50)]
T0 = datetime(2024, 1, 1, 9, 0, tzinfo=UTC)
ROUNDS = 15
BATCH = 5000
# Only the newest runs can still be queued or running: a lab's unfinished runs are bounded by its
# cluster, not by its history (so `status`, which lists them, has as much to show at 10M as at 1M).
IN_FLIGHT_UNITS = 5000


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


# ------------------------------------------------------------------ the log


def run_id(i: int) -> str:
    return f"run_{i:09d}s{i % 997:04d}"


def checkpoint_id(i: int) -> str:
    return f"artifact_{hashlib.sha256(str(i).encode()).hexdigest()[:24]}"


def unit_events(i: int, in_flight: bool = False) -> list[NewEvent]:
    """One run and what hangs off it; pipelines every 25th run, sweeps every 40th, evals every 5th.

    ``in_flight``: one such run in 100 is left queued, another running."""
    rid, user = run_id(i), USERS[i % len(USERS)]
    stream = f"run-{rid}"
    at = T0 + timedelta(seconds=30 * i)
    key = hashlib.sha256(rid.encode()).hexdigest()
    out: list[NewEvent] = []
    pipeline = None
    if i % 25 in (0, 1):
        pipeline = (f"pipeline_s{i // 25:09d}", "prep" if i % 25 == 0 else "train")
    sweep = f"sweep_s{i // 40:09d}" if i % 40 < 8 else None
    recipe = {
        "name": f"train-{i % 13}",
        "command": ["python", "train.py", "--lr", "{params.lr}", "--data", "{inputs.data.path}"],
        "params": {"lr": 0.001 * (1 + i % 7), "epochs": 20, "batch_size": 256},
        "resources": {"gpus": 1, "cpus": 8, "mem": "32G", "time": "04:00:00"},
    }
    common = {"run_id": rid, "name": recipe["name"], "user": user, "executor": "slurm", "recipe": recipe}
    run_dir = f"/scratch/{user}/labctl/runs/{rid}"
    if i % 25 == 0:
        stages = [
            StageSpec(name="prep", run_ids=[rid]),
            StageSpec(name="train", run_ids=[run_id(i + 1)], parents=["prep"]),
        ]
        created = PipelineCreated(pipeline_id=pipeline[0], name="pretrain", user=user, stages=stages)  # type: ignore[index]
        out.append(NewEvent(f"pipeline-{pipeline[0]}", created, 0))  # type: ignore[index]
    if i % 40 == 0:
        ids = [run_id(i + k) for k in range(8)]
        out.append(
            NewEvent(
                f"sweep-{sweep}",
                SweepCreated(sweep_id=sweep, name="lr", user=user, arg="lr", start=0, end=7, run_ids=ids),
                0,
            )  # type: ignore[arg-type]
        )
    version = 0
    if pipeline:
        pending = RunPending(
            **common, run_dir=run_dir, pipeline_id=pipeline[0], stage_name=pipeline[1],
            parents=[] if pipeline[1] == "prep" else ["prep"],
        )  # fmt: skip
        out.append(NewEvent(stream, pending, 0))
        version = 1
    submitted = RunSubmitted(
        **common,
        run_dir=run_dir,
        recipe_path="recipes/train.toml",
        cache_key=key,
        inputs=[InputRef(role="data", type="dataset", path="/scratch/shared/imagenet-64", artifact_id=key[:16])],
        outputs=[OutputSpec(role="ckpt", type="checkpoint", path="ckpt", alias=f"train-{i % 50}")],
        repo="git@github.com:lab/vision.git",
        repo_commit=key[:40],
        repo_dirty=False,
        pipeline_id=pipeline[0] if pipeline else None,
        stage_name=pipeline[1] if pipeline else None,
        sweep_id=sweep,
        sweep_index=i % 40 if sweep else None,
    )
    out.append(NewEvent(stream, submitted, version))
    spread = (i // len(USERS)) % 100 if in_flight else None
    if spread == 7:
        return out  # still queued
    out.append(NewEvent(stream, RunStarted(run_id=rid, started_at=at, host=f"gpu{i % 64:03d}", job_id=str(10**6 + i))))
    if spread == 8:
        return out  # still running
    points = [MetricPoint(step=s * 100, values={"loss": 2.0 / (s + 1), "acc": s / 20}) for s in range(20)]
    out.append(NewEvent(f"metrics-{rid}", MetricsLogged(run_id=rid, offset=0, end=1400, points=points), 0))
    ok = i % 10 != 0
    if ok:
        ckpt = checkpoint_id(i)
        out.append(
            NewEvent(
                f"artifact-{ckpt}",
                ArtifactRegistered(
                    artifact_id=ckpt,
                    hash=key,
                    kind="checkpoint",
                    path=f"/scratch/_objects/{key[:2]}/{key}",
                    user=user,
                    producer_run_id=rid,
                    size_bytes=1 << 28,
                    metadata={"step": 2000},
                ),
                0,
            )
        )
        out.append(NewEvent(stream, OutputLinked(run_id=rid, role="ckpt", artifact_id=ckpt, path=f"{run_dir}/ckpt")))
    end = RunFinished(
        run_id=rid,
        state="succeeded" if ok else "failed",
        exit_code=0 if ok else 1,
        started_at=at,
        finished_at=at + timedelta(seconds=3600),
    )
    out.append(NewEvent(stream, end))
    if ok and i % 5 == 1:
        ekey = hashlib.sha256(f"eval{i}".encode()).hexdigest()[:32]
        erid = f"{rid}e"
        req = EvalRequested(
            eval_key=ekey, policy="per-ckpt", checkpoint_artifact_id=checkpoint_id(i), eval_recipe_hash=key[:16],
            run_id=erid, step=2000,
        )  # fmt: skip
        out.append(NewEvent(f"eval-{ekey}", req, 0))
        out.append(
            NewEvent(f"eval-{ekey}", EvalRecorded(eval_key=ekey, run_id=erid, metrics={"top1": 0.7, "loss": 1.1}))
        )
    return out


def units_for(target: int) -> int:
    """About how many units make ``target`` events (the pattern repeats every 200 units)."""
    per_unit = sum(len(unit_events(i)) for i in range(200)) / 200
    return round(target / per_unit)


def log_batches(target: int, start_unit: int = 0) -> Iterator[tuple[list[NewEvent], int]]:
    """Batches of about ``BATCH`` events until ``target`` events; yields (batch, next unit).

    The last ``IN_FLIGHT_UNITS`` units (of the log ``start_unit + target`` events would make, about)
    may be unfinished."""
    n, i, batch = 0, start_unit, []
    in_flight_from = start_unit + units_for(target) - IN_FLIGHT_UNITS
    while n < target:
        # A pipeline's or sweep's runs stay in the batch of its head, so their streams line up.
        unit = unit_events(i, in_flight=i >= in_flight_from)
        batch += unit
        n += len(unit)
        i += 1
        if len(batch) >= BATCH and i % 40 == 0:
            yield batch, i
            batch = []
    if batch:
        yield batch, i


def populate(conn: psycopg.Connection[Any], target: int, say: Callable[[str], None]) -> tuple[int, int, float]:
    """Append about ``target`` events; (events, units, seconds)."""
    meta = EventMeta(actor="bench", host="bench", labctl_version="bench")
    n, units, start = 0, 0, time.perf_counter()
    for batch, next_unit in log_batches(target):
        units = next_unit
        with conn.transaction():
            append_batch(conn, batch, meta=meta)
        n += len(batch)
        if n % (BATCH * 100) < len(batch):
            say(f"  {n:,} events")
    return n, units, time.perf_counter() - start


# ---------------------------------------------------------------- measuring


@dataclass
class Row:
    size: int
    events: int
    append_rate: float
    replay_s: float
    replay_peak_mb: float
    status_ms: float
    show_ms: float
    log_ms: float
    history_ms: float
    lineage_ms: float
    api_ms: float | None
    html_ms: float | None
    until_s: float
    verify_full_s: float
    verify_peak_mb: float
    chain_rate: float
    scan_rate: float
    verify_incremental_s: float
    db_mb: float


def p50_ms(fn: Callable[[], object], rounds: int = ROUNDS) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times) * 1000


class PeakMemory:
    """This process's highest resident set size while the block runs, sampled every 50 ms, in MB."""

    def __enter__(self) -> PeakMemory:
        self.mb = self._rss_mb()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sampler.join()
        self.mb = max(self.mb, self._rss_mb())

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.mb = max(self.mb, self._rss_mb())

    @staticmethod
    def _rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def bare_scan(conn: psycopg.Connection[Any]) -> float:
    """Seconds to stream the verifier's columns through a server-side cursor, doing nothing."""
    start = time.perf_counter()
    with conn.transaction(), conn.cursor(name="bare", binary=True) as cur:
        cur.execute(
            "SELECT position, stream, version, type, convert_to(data::text, 'UTF8'), convert_to(meta::text, 'UTF8'), "
            "(extract(epoch FROM recorded_at) * 1000000)::bigint, hash FROM labctl.events ORDER BY position"
        )
        while cur.fetchmany(20000):
            pass
    return time.perf_counter() - start


def api_runs_page() -> Callable[[psycopg.Connection[Any], str], object] | None:
    try:
        from labctl.web import api
    except ImportError:
        return None
    return lambda conn, user: api.runs_page(conn, api.RunsQuery(user=user))


def html_runs_page_ms(url: str, user: str) -> float | None:
    """p50 of ``GET /runs?user=`` through the dashboard's own ASGI app (pool, guard, page, template)."""
    try:
        from labctl.web.app import Web, create_app
    except ImportError:
        return None
    web = Web(url, pool_size=2)
    app = create_app(web, allowed_hosts=["127.0.0.1"])
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/runs",
        "raw_path": b"/runs",
        "root_path": "",
        "query_string": f"user={user}".encode(),
        "headers": [(b"host", b"127.0.0.1:8765")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8765),
    }

    async def get() -> tuple[int, int]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(dict(scope), receive, send)
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        return status, sum(len(m.get("body", b"")) for m in sent if m["type"] == "http.response.body")

    async def rounds() -> float:
        times = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            status, size = await get()
            times.append((time.perf_counter() - start) * 1000)
            assert status == 200 and size > 0, f"GET /runs answered {status} with {size} bytes"
        return median(times)

    web.pool.open(True, 10.0)
    try:
        return asyncio.run(rounds())
    finally:
        web.pool.close()


def measure(url: str, size: int, say: Callable[[str], None]) -> Row:
    with connect(url) as conn:
        ensure_schema(conn)
        say(f"{size:,}: appending")
        n, units, append_s = populate(conn, size, say)
        conn.execute("VACUUM ANALYZE")
        say(f"{size:,}: {n:,} events in {append_s:.1f}s; replaying")
        start = time.perf_counter()
        with PeakMemory() as replay_memory:
            projections.replay_live(conn)
        # What a user waits for: the report's own time ends before the fold's objects are freed,
        # which took a minute or two at 10M events (8 GB of rows).
        replay_s = time.perf_counter() - start
        conn.execute("VACUUM ANALYZE")
        who = USERS[7]
        # A run of ``who`` (i % 50 == 7) in the middle of the log, finished with its checkpoint (i % 10 != 0).
        probe = units // 2 // 50 * 50 + 7
        rid = run_id(probe)
        say(f"{size:,}: lookups")
        status_ms = p50_ms(lambda: runs.status_rows(conn, user=who, state=None, everything=False))
        show_ms = p50_ms(lambda: runs.show_run(conn, rid))
        log_ms = p50_ms(lambda: runs.show_run(conn, runs.resolve_run(conn, rid[:13]))["log"])
        history_ms = p50_ms(lambda: eventlog.history(conn, rid))
        lineage_ms = p50_ms(lambda: lineage.lineage(conn, who, checkpoint_id(probe)))
        page = api_runs_page()
        api_ms = p50_ms(lambda: page(conn, who)) if page else None
        html_ms = html_runs_page_ms(url, who)
        # Each figure as soon as it is known: a long run stopped early keeps what it measured.
        say(
            f"{size:,}: replay {replay_s:.1f}s (peak {replay_memory.mb:,.0f} MB); "
            f"status {status_ms:.1f} ms, show {show_ms:.1f} ms, log {log_ms:.1f} ms, "
            f"history {history_ms:.1f} ms, lineage {lineage_ms:.1f} ms, API page {api_ms or 0:.1f} ms, "
            f"HTML page {html_ms or 0:.1f} ms"
        )
        middle = n // 2
        say(f"{size:,}: replay --until position {middle:,} (cold)")
        start = time.perf_counter()
        projections.replay_as_of(conn, middle)
        until_s = time.perf_counter() - start
        conn.execute(f"DROP SCHEMA asof_{middle} CASCADE")
        say(f"{size:,}: replay --until {until_s:.1f}s")
        say(f"{size:,}: audit verify --full")
        start = time.perf_counter()
        with PeakMemory() as verify_memory:
            report = maintenance.audit(conn, full=True)
        verify_full_s = time.perf_counter() - start
        assert report.clean, report.problems or report.differences
        with conn.transaction():
            start = time.perf_counter()
            chain = verify.verify_chain(conn)
            chain_s = time.perf_counter() - start
        scan_s = bare_scan(conn)
        chain_rate, scan_rate = chain.checked / chain_s, chain.checked / scan_s
        say(
            f"{size:,}: verify --full {verify_full_s:.1f}s (peak {verify_memory.mb:,.0f} MB); "
            f"chain {chain_rate:,.0f}/s, scan {scan_rate:,.0f}/s"
        )
        more = next(iter(log_batches(1000, start_unit=units + 40 - units % 40)))[0]
        with conn.transaction():
            append_batch(conn, more, meta=EventMeta(actor="bench"))
        start = time.perf_counter()
        incremental = maintenance.audit(conn)
        verify_incremental_s = time.perf_counter() - start
        assert incremental.clean and incremental.checked_after == report.position, incremental
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        db_mb = (row[0] if row else 0) / 2**20
    return Row(
        size=size,
        events=n,
        append_rate=n / append_s,
        replay_s=replay_s,
        replay_peak_mb=replay_memory.mb,
        status_ms=status_ms,
        show_ms=show_ms,
        log_ms=log_ms,
        history_ms=history_ms,
        lineage_ms=lineage_ms,
        api_ms=api_ms,
        html_ms=html_ms,
        until_s=until_s,
        verify_full_s=verify_full_s,
        verify_peak_mb=verify_memory.mb,
        chain_rate=chain_rate,
        scan_rate=scan_rate,
        verify_incremental_s=verify_incremental_s,
        db_mb=db_mb,
    )


def table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    header = ["measure", *[f"{r.events:,} events" for r in rows]]
    if len(rows) > 1:
        header.append(f"growth {rows[0].events:,} -> {rows[-1].events:,} ({rows[-1].events / rows[0].events:,.0f}x)")

    def line(name: str, values: list[float | None], fmt: Callable[[float], str]) -> list[str]:
        cells = [fmt(v) if v is not None else "-" for v in values]
        if len(rows) > 1 and values[0] and values[-1]:
            cells.append(f"{values[-1] / values[0]:.1f}x")
        elif len(rows) > 1:
            cells.append("-")
        return [name, *cells]

    ms: Callable[[float], str] = lambda v: f"{v:.1f}"  # noqa: E731
    s: Callable[[float], str] = lambda v: f"{v:.2f}"  # noqa: E731
    rate: Callable[[float], str] = lambda v: f"{v:,.0f}"  # noqa: E731
    body = [
        line("batched append (store, 5k per call), events/s", [r.append_rate for r in rows], rate),
        line("`status` of one user p50, ms", [r.status_ms for r in rows], ms),
        line("`show` of one run p50, ms", [r.show_ms for r in rows], ms),
        line("`log` of one run (found by an id prefix) p50, ms", [r.log_ms for r in rows], ms),
        line("`history` of one run p50, ms", [r.history_ms for r in rows], ms),
        line("`lineage` of one checkpoint p50, ms", [r.lineage_ms for r in rows], ms),
        line("API runs page (one user, 100 rows) p50, ms", [r.api_ms for r in rows], ms),
        line("dashboard runs page, HTML (one user, 100 rows) p50, ms", [r.html_ms for r in rows], ms),
        line("`replay` end to end, s", [r.replay_s for r in rows], s),
        line("`replay` end to end, events/s", [r.events / r.replay_s for r in rows], rate),
        line("`replay`: peak memory of the process, MB", [r.replay_peak_mb for r in rows], rate),
        line("cold `replay --until` the middle of the log, s", [r.until_s for r in rows], s),
        line("`audit verify --full` (chain + read models), s", [r.verify_full_s for r in rows], s),
        line("`audit verify --full`: peak memory of the process, MB", [r.verify_peak_mb for r in rows], rate),
        line("hash chain in Python, events/s", [r.chain_rate for r in rows], rate),
        line("bare scan of the same columns, events/s", [r.scan_rate for r in rows], rate),
        line("`audit verify` incremental (1,000 new events), s", [r.verify_incremental_s for r in rows], s),
        line("database size, MB", [r.db_mb for r in rows], rate),
    ]
    return header, body


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10k,100k", help="comma-separated event counts, e.g. 10k,100k,1M,10M")
    parser.add_argument("--write", action="store_true", help="replace the section of bench/RESULTS.md")
    args = parser.parse_args(argv)
    # A plain `kill` still stops the embedded server we started (bench_server's finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    say = step_printer()
    rows = []
    for size in sizes:
        with bench_server([DB], prefix="labctl-scale-") as srv:
            rows.append(measure(srv.url(DB), size, say))
            version = srv.describe()
        header, body = table(rows)
        print(text_table(header, body), flush=True)  # after each size: a long run's early sizes are kept
    intro = (
        "`bench/bench_scale.py`: per size, a fresh database filled by the store's batched append with a realistic "
        "log (50 users; runs submitted/started/finished, 1 in 10 failed; among the newest 5,000 runs 1% left queued "
        "and 1% running, since a lab's unfinished runs are bounded by its cluster, not its history; checkpoints "
        "registered and linked; metrics batches; two-stage pipelines every 25 runs, 8-point sweeps every 40, "
        "evals of every 5th checkpoint: about 6 events and 40 metric points per run), then `replay` builds the read "
        "models. Lookups are "
        "p50 of 15 in-process calls on an open connection (the CLI's own start-up is in the CLI section); the "
        "incremental verify starts from the checkpoint the full one recorded, after 1,000 more events."
    )
    report_section(
        HEADING,
        f"{intro}\n\n{machine_line(version)}\n\n{markdown_table(header, body)}",
        write=args.write,
    )


if __name__ == "__main__":
    main()
