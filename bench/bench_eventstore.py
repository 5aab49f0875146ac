"""The event store against its floors and against the eventsourcing library, all on one server in one run.

Measures, on the same Postgres (embedded, in a temp home, unless
LABCTL_DATABASE_URL is set) in databases ``bench_labctl`` and ``bench_es``:

1. single appends: ``events.append`` per event (autocommit), vs. a bare
   one-row INSERT and vs. eventsourcing's ``insert_events`` of one event;
2. batched appends: ``events.append_batch`` of 1,000 RunFinished events per
   call vs. COPY of the same rows into an identical table (scratch schema),
   and vs. eventsourcing's ``insert_events`` of 1,000;
3. rebuild: ``projections.fold`` over ~66k runs (3 events each) vs. a bare
   server-side-cursor scan of the same rows; ``replay_live`` end to end;
4. read-all pages of 1,000: ``events.read_all`` vs. eventsourcing's
   ``select_notifications``, once with every payload decoded (the same msgspec
   decode on both sides) and once with payloads untouched (``read_all``
   decodes on first use; eventsourcing returns bytes);
5. follower latency append -> handler: ``events.follow.follow`` vs. an
   eventsourcing subscription.

Timed cases are interleaved round by round and the median round is kept, so
both sides of a ratio see the same noise.

    PYTHONPATH=. python bench/bench_eventstore.py [--quick] [--write]

With ``--only replay``, just the rebuild log and ``replay_live`` end to end, each round in a fresh
process (events/s and the process's peak memory); ``--against TREE`` alternates it with another
checkout's code (e.g. ``git archive <commit> | tar -x -C TREE``) on the same log, for an A/B.
With ``--only batched``, just the batched appends against COPY and eventsourcing, on a fresh log, each
round's rates and ratio printed (for an A/B of the append, run it alternately from each checkout).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from eventsourcing.persistence import StoredEvent as EsStoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import machine_line, median, percentile, report_section, timed

from events import EventMeta, NewEvent, append, append_batch, last_position, read_all
from events.codec import Event, decode_event, encode
from events.follow import follow
from events.types import InputRef, OutputSpec, RunFinished, RunStarted, RunSubmitted
from events.verify import _SCAN as VERIFY_SCAN
from events.verify import verify_chain
from labctl.db import connect, embedded_url, ensure_schema, remove_embedded
from projections.engine import _SCAN as FOLD_SCAN
from projections.engine import fold, replay_live

LABCTL_DB = "bench_labctl"
ES_DB = "bench_es"
SCRATCH = "bench_scratch"
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
EVENT_COLUMNS = "position, stream, version, type, data, meta, recorded_at, hash"


@dataclass(frozen=True)
class Sizes:
    runs: int  # rebuild log = 3 events per run
    single: int  # single appends per side per round
    batch: int  # events per batched call
    batched: int  # events per side per round
    follow: int  # follower samples per side
    rounds: int


QUICK = Sizes(runs=8_000, single=150, batch=1000, batched=10_000, follow=100, rounds=3)
FULL = Sizes(runs=66_667, single=600, batch=1000, batched=20_000, follow=500, rounds=5)


# ------------------------------------------------------------------ events


def run_id(i: int) -> str:
    return f"20250301-{i:07d}-train"


def submitted(i: int) -> RunSubmitted:
    rid = run_id(i)
    key = hashlib.sha256(rid.encode()).hexdigest()
    return RunSubmitted(
        run_id=rid,
        name="train",
        user="alice",
        executor="slurm",
        run_dir=f"/scratch/alice/labctl/runs/{rid}",
        recipe={
            "command": "python train.py --lr {lr} --epochs {epochs} --data {inputs.data}",
            "env": {"OMP_NUM_THREADS": "8", "WANDB_MODE": "offline"},
            "params": {"lr": 0.001 * (1 + i % 7), "epochs": 20, "batch_size": 256},
            "resources": {"gpus": 1, "cpus": 8, "mem": "32G", "time": "04:00:00"},
        },
        recipe_path="recipes/train.toml",
        cache_key=key,
        inputs=[InputRef(role="data", type="dataset", path="/scratch/shared/imagenet-64", artifact_id=key[:16])],
        outputs=[OutputSpec(role="ckpt", type="checkpoint", path="ckpt", alias=f"alice/train-{i % 50}")],
        repo="git@github.com:lab/vision.git",
        repo_commit=key[:40],
        repo_dirty=False,
    )


def started(i: int) -> RunStarted:
    return RunStarted(
        run_id=run_id(i), started_at=T0 + timedelta(seconds=i), host=f"gpu{i % 32:03d}", job_id=str(10**6 + i)
    )


def finished(i: int) -> RunFinished:
    return RunFinished(
        run_id=run_id(i),
        state="succeeded" if i % 10 else "failed",
        exit_code=0 if i % 10 else 1,
        started_at=T0 + timedelta(seconds=i),
        finished_at=T0 + timedelta(seconds=i + 3600),
    )


def run_log_batches(runs: int, per_batch: int = 1000) -> Iterator[list[NewEvent]]:
    """The rebuild log: each batch submits, starts and finishes ``per_batch`` runs."""
    for lo in range(0, runs, per_batch):
        ids = range(lo, min(lo + per_batch, runs))
        yield (
            [NewEvent(f"run-{run_id(i)}", submitted(i), 0) for i in ids]
            + [NewEvent(f"run-{run_id(i)}", started(i), 1) for i in ids]
            + [NewEvent(f"run-{run_id(i)}", finished(i), 2) for i in ids]
        )


class Streams:
    """Fresh stream names, so every timed append creates a new stream at version 0."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.n = 0

    def take(self, count: int) -> list[str]:
        names = [f"run-{self.prefix}-{self.n + k:08d}" for k in range(count)]
        self.n += count
        return names


def es_event(stream: str, version: int, event: Event) -> EsStoredEvent:
    return EsStoredEvent(
        originator_id=stream, originator_version=version, topic=f"events.types:{event.type_name}", state=encode(event)
    )


# --------------------------------------------------------------- databases


@dataclass
class Server:
    admin: str  # conninfo of the maintenance database
    version: str
    home: Path | None  # the temp LABCTL_HOME of an embedded server we started

    def url(self, dbname: str) -> str:
        return conninfo.make_conninfo(self.admin, dbname=dbname)


@contextmanager
def server() -> Iterator[Server]:
    configured = os.environ.get("LABCTL_DATABASE_URL")
    home = None if configured else Path(tempfile.mkdtemp(prefix="labctl-bench-es-"))
    try:
        base = configured or embedded_url(home)
        admin = conninfo.make_conninfo(base, dbname="postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            for db in (LABCTL_DB, ES_DB):
                conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
                conn.execute(f"CREATE DATABASE {db}")
        yield Server(admin, row[0] if row else "?", home)
        with psycopg.connect(admin, autocommit=True) as conn:
            for db in (LABCTL_DB, ES_DB):
                conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    finally:
        if home is not None:
            remove_embedded(home)
            shutil.rmtree(home, ignore_errors=True)


def es_recorder(srv: Server, pool_size: int = 1, *, db_functions: bool = False) -> PostgresApplicationRecorder:
    params = conninfo.conninfo_to_dict(srv.url(ES_DB))
    datastore = PostgresDatastore(
        dbname=ES_DB,
        host=str(params.get("host", "localhost")),
        port=str(params.get("port", 5432)),
        user=str(params.get("user", "postgres")),
        password=str(params.get("password", "")),
        originator_id_type="text",  # stream names as ids, like ours
        pool_size=pool_size,
        enable_db_functions=db_functions,
    )
    recorder = PostgresApplicationRecorder(datastore)
    recorder.create_table()
    return recorder


def create_copy_target(conn: psycopg.Connection[Any]) -> None:
    """An empty table with the same columns, types, keys and indexes as ``events``."""
    conn.execute(f"DROP SCHEMA IF EXISTS {SCRATCH} CASCADE")
    conn.execute(f"CREATE SCHEMA {SCRATCH}")
    conn.execute(f"CREATE TABLE {SCRATCH}.events (LIKE labctl.events INCLUDING ALL)")


# ---------------------------------------------------------------- measuring


@dataclass
class Figure:
    """One measured rate (events/s), the median over rounds."""

    rates: list[float]

    @property
    def rate(self) -> float:
        return median(self.rates)


def rate_of(n: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def cpu_seconds(conn: psycopg.Connection[Any]) -> float | None:
    """CPU time of this process plus the connection's server backend (None when the server is not on this machine).

    Contention on a busy machine hurts a call that waits for the server (an append) more than
    a COPY, whose client and server run at once: CPU per event is the ratio load cannot skew.
    """
    try:
        fields = Path(f"/proc/{conn.info.backend_pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return time.process_time() + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def interleaved(rounds: int, cases: dict[str, Callable[[int], float]]) -> dict[str, Figure]:
    """Run each case once per round, in turn, rotating who goes first; keep every round's rate."""
    names = list(cases)
    out = {name: Figure([]) for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            out[name].rates.append(cases[name](r))
    return out


def bench_single(conn: psycopg.Connection[Any], es: PostgresApplicationRecorder, sizes: Sizes) -> dict[str, Figure]:
    ours, raw, theirs = Streams("single"), Streams("single-raw"), Streams("single-es")
    conn.execute("CREATE TABLE IF NOT EXISTS bench_scratch.single (stream text PRIMARY KEY, data json NOT NULL)")
    payload = encode(finished(1)).decode()

    def labctl(_r: int) -> float:
        names = ours.take(sizes.single)
        event = finished(1)

        def go() -> None:
            for s in names:
                append(conn, s, [event], expected_version=0)

        return rate_of(sizes.single, go)

    def insert(_r: int) -> float:
        names = raw.take(sizes.single)

        def go() -> None:
            for s in names:
                conn.execute("INSERT INTO bench_scratch.single (stream, data) VALUES (%s, %s::json)", (s, payload))

        return rate_of(sizes.single, go)

    def eventsourcing(_r: int) -> float:
        batch = [[es_event(s, 1, finished(1))] for s in theirs.take(sizes.single)]

        def go() -> None:
            for one in batch:
                es.insert_events(one)

        return rate_of(sizes.single, go)

    return interleaved(sizes.rounds, {"labctl": labctl, "insert": insert, "es": eventsourcing})


def bench_batched(conn: psycopg.Connection[Any], es: PostgresApplicationRecorder, sizes: Sizes) -> dict[str, Figure]:
    ours, copied, theirs = Streams("batch"), Streams("batch-copy"), Streams("batch-es")
    calls = sizes.batched // sizes.batch
    n = calls * sizes.batch
    meta = encode(EventMeta()).decode()
    next_position = [10**9]
    per_cpu: dict[str, list[float]] = {"labctl_cpu": [], "copy_cpu": []}

    def on_cpu(name: str, go: Callable[[], None]) -> float:
        """Run ``go``; record its events per CPU-second (both sides of the connection); return its rate."""
        before = cpu_seconds(conn)
        rate = rate_of(n, go)
        after = cpu_seconds(conn)
        if before is not None and after is not None and after > before:
            per_cpu[name].append(n / (after - before))
        return rate

    def labctl(_r: int) -> float:
        names = ours.take(n)
        chunks = [
            [NewEvent(s, finished(k), 0) for k, s in enumerate(names[c * sizes.batch : (c + 1) * sizes.batch])]
            for c in range(calls)
        ]

        def go() -> None:
            for chunk in chunks:
                append_batch(conn, chunk)

        return on_cpu("labctl_cpu", go)

    def copy(_r: int) -> float:
        at = datetime.now(UTC)
        rows = []
        for k, s in enumerate(copied.take(n)):
            data = encode(finished(k)).decode()
            rows.append((next_position[0], s, 1, "RunFinished", data, meta, at, hashlib.sha256(data.encode()).digest()))
            next_position[0] += 1
        chunks = [rows[c * sizes.batch : (c + 1) * sizes.batch] for c in range(calls)]

        def go() -> None:
            for chunk in chunks:
                with (
                    conn.transaction(),
                    conn.cursor() as cur,
                    cur.copy(f"COPY {SCRATCH}.events ({EVENT_COLUMNS}) FROM STDIN") as cp,
                ):
                    for row in chunk:
                        cp.write_row(row)

        return on_cpu("copy_cpu", go)

    def eventsourcing(_r: int) -> float:
        names = theirs.take(n)
        chunks = [
            [es_event(s, 1, finished(k)) for k, s in enumerate(names[c * sizes.batch : (c + 1) * sizes.batch])]
            for c in range(calls)
        ]

        def go() -> None:
            for chunk in chunks:
                es.insert_events(chunk)

        return rate_of(n, go)

    figures = interleaved(sizes.rounds, {"labctl": labctl, "copy": copy, "es": eventsourcing})
    figures.update({name: Figure(rates) for name, rates in per_cpu.items() if len(rates) == sizes.rounds})
    return figures


def populate(conn: psycopg.Connection[Any], es: PostgresApplicationRecorder, sizes: Sizes) -> tuple[float, float, int]:
    """Write the rebuild log to both stores; return their batched rates and the event count.

    ``es`` must use eventsourcing's db-function insert: its default pipelined
    insert hangs (psycopg pipeline deadlock) on batches over ~300 KB.
    """
    ours_s = theirs_s = 0.0
    n = 0
    for batch in run_log_batches(sizes.runs):
        ours_s += timed(lambda b=batch: append_batch(conn, b))
        mirror = [es_event(e.stream, (e.expected_version or 0) + 1, e.event) for e in batch]
        theirs_s += timed(lambda m=mirror: es.insert_events(m))
        n += len(batch)
    return n / ours_s, n / theirs_s, n


def bench_rebuild(conn: psycopg.Connection[Any], sizes: Sizes, total: int) -> dict[str, Figure]:
    def folded(_r: int) -> float:
        result = fold(conn)
        assert result.events == total, (result.events, total)
        return result.events / result.seconds

    def scan(_r: int) -> float:
        end = last_position(conn)

        def go() -> None:
            with conn.transaction(), conn.cursor(name="bench_scan") as cur:
                cur.itersize = 20000
                cur.execute(FOLD_SCAN, (end,))
                for _row in cur:
                    pass

        return rate_of(total, go)

    return interleaved(max(2, sizes.rounds - 2), {"fold": folded, "scan": scan})


def bench_verify(conn: psycopg.Connection[Any], sizes: Sizes, total: int) -> dict[str, Figure]:
    """The audit's hash chain, recomputed in Python, vs. a bare scan of the columns it reads."""

    def chain(_r: int) -> float:
        with conn.transaction():
            start = time.perf_counter()
            report = verify_chain(conn)
            assert report.problem is None and report.checked == total, report
            return total / (time.perf_counter() - start)

    def scan(_r: int) -> float:
        def go() -> None:
            with conn.transaction(), conn.cursor(name="bench_verify_scan", binary=True) as cur:
                cur.execute(VERIFY_SCAN, (0, None, None))
                while cur.fetchmany(20000):
                    pass

        return rate_of(total, go)

    return interleaved(max(2, sizes.rounds - 2), {"chain": chain, "scan": scan})


def bench_read_all(
    conn: psycopg.Connection[Any], es: PostgresApplicationRecorder, sizes: Sizes, total: int
) -> dict[str, Figure]:
    type_of = {f"events.types:{name}": name for name in ("RunSubmitted", "RunStarted", "RunFinished")}

    def labctl(decode: bool) -> Callable[[int], float]:
        def case(_r: int) -> float:
            def go() -> None:
                after, seen = 0, 0
                while page := read_all(conn, after, 1000):
                    if decode:
                        for e in page:
                            _ = e.data  # read_all decodes a payload on first use
                    after = page[-1].position
                    seen += len(page)
                assert seen == total

            return rate_of(total, go)

        return case

    def eventsourcing(decode: bool) -> Callable[[int], float]:
        def case(_r: int) -> float:
            def go() -> None:
                after, seen = 0, 0
                while page := es.select_notifications(after, 1000, inclusive_of_start=False):
                    if decode:
                        for note in page:
                            decode_event(type_of[note.topic], note.state)  # the same msgspec decode as ours
                    after = page[-1].id
                    seen += len(page)
                assert seen == total

            return rate_of(total, go)

        return case

    return interleaved(
        max(2, sizes.rounds - 2),
        {
            "labctl": labctl(decode=True),
            "es": eventsourcing(decode=True),
            "labctl_raw": labctl(decode=False),
            "es_raw": eventsourcing(decode=False),
        },
    )


def bench_follow_labctl(url: str, conn: psycopg.Connection[Any], samples: int) -> list[float]:
    """Seconds from just before ``append`` to the follower yielding that event."""
    arrived: queue.Queue[tuple[int, float]] = queue.Queue()
    stop = threading.Event()

    def follower(after: int) -> None:
        for page in follow(url, after, stop=stop):
            now = time.perf_counter()
            for e in page:
                arrived.put((e.position, now))

    thread = threading.Thread(target=follower, args=(last_position(conn),), daemon=True)
    thread.start()
    time.sleep(0.3)  # let it connect and LISTEN
    names = Streams("follow").take(samples + 1)
    event = finished(1)
    latencies = []
    for s in names[:samples]:
        t0 = time.perf_counter()
        (position,) = append(conn, s, [event], expected_version=0)
        got, t1 = arrived.get(timeout=10)
        assert got == position, (got, position)
        latencies.append(t1 - t0)
    stop.set()
    append(conn, names[-1], [event], expected_version=0)  # wake it so it sees ``stop``
    thread.join(timeout=5)
    return latencies


def bench_follow_es(srv: Server, samples: int) -> list[float]:
    recorder = es_recorder(srv, pool_size=3)  # listener, puller, writer
    names = Streams("follow-es").take(samples)
    latencies = []
    try:
        with recorder.subscribe(gt=recorder.max_notification_id()) as subscription:
            time.sleep(0.3)
            for s in names:
                t0 = time.perf_counter()
                (nid,) = recorder.insert_events([es_event(s, 1, finished(1))]) or [0]
                note = next(subscription)
                latencies.append(time.perf_counter() - t0)
                assert note.id == nid, (note.id, nid)
    finally:
        recorder.datastore.close()
    return latencies


# -------------------------------------------------------------- reporting


def fmt(rate: float) -> str:
    return f"{rate:,.0f}"


@dataclass
class Report:
    sizes: Sizes
    machine: str
    single: dict[str, Figure]
    batched: dict[str, Figure]
    populate: tuple[float, float, int]
    rebuild: dict[str, Figure]
    verify: dict[str, Figure]
    replay_s: float
    replay_events: int
    read: dict[str, Figure]
    follow_ours: list[float]
    follow_es: list[float]

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """(measure, labctl, baseline, labctl / baseline, target)."""
        s, b, rb, rd = self.single, self.batched, self.rebuild, self.read
        p50, p99 = percentile(self.follow_ours, 50) * 1e3, percentile(self.follow_ours, 99) * 1e3
        e50, e99 = percentile(self.follow_es, 50) * 1e3, percentile(self.follow_es, 99) * 1e3
        pop_ours, pop_es, pop_n = self.populate
        return [
            (
                "single append, events/s (vs 1-row INSERT)",
                fmt(s["labctl"].rate),
                fmt(s["insert"].rate),
                f"{s['labctl'].rate / s['insert'].rate:.0%}",
                self.verdict(s["labctl"].rate >= 2000, ">= 2,000/s"),
            ),
            (
                "single append, events/s (vs eventsourcing)",
                fmt(s["labctl"].rate),
                fmt(s["es"].rate),
                f"{s['labctl'].rate / s['es'].rate:.0%}",
                "",
            ),
            (
                f"batched append x{self.sizes.batch}, events/s (vs COPY)",
                fmt(b["labctl"].rate),
                fmt(b["copy"].rate),
                f"{b['labctl'].rate / b['copy'].rate:.0%}",
                self.verdict(
                    b["labctl"].rate >= 0.7 * b["copy"].rate and b["labctl"].rate >= 100_000,
                    ">= 70% of COPY and >= 100k/s",
                ),
            ),
            (
                f"batched append x{self.sizes.batch}, events per CPU-second, client + server (vs COPY)",
                fmt(b["labctl_cpu"].rate) if "labctl_cpu" in b else "n/a",
                fmt(b["copy_cpu"].rate) if "copy_cpu" in b else "n/a",
                f"{b['labctl_cpu'].rate / b['copy_cpu'].rate:.0%}" if "labctl_cpu" in b and "copy_cpu" in b else "",
                "",
            ),
            (
                f"batched append x{self.sizes.batch}, events/s (vs eventsourcing)",
                fmt(b["labctl"].rate),
                fmt(b["es"].rate),
                f"{b['labctl'].rate / b['es'].rate:.0%}",
                "",
            ),
            (
                f"batched append x3000 run log, events/s (vs eventsourcing db-function insert, {pop_n:,} events)",
                fmt(pop_ours),
                fmt(pop_es),
                f"{pop_ours / pop_es:.0%}",
                "",
            ),
            (
                f"rebuild fold, events/s (vs bare cursor scan, {self.replay_events:,} events)",
                fmt(rb["fold"].rate),
                fmt(rb["scan"].rate),
                f"{rb['fold'].rate / rb['scan'].rate:.0%}",
                self.verdict(rb["fold"].rate >= 150_000, ">= 150k/s"),
            ),
            (
                f"audit verify: hash chain recomputed in Python, events/s (vs bare scan of its columns, "
                f"{self.replay_events:,} events)",
                fmt(self.verify["chain"].rate),
                fmt(self.verify["scan"].rate),
                f"{self.verify['chain'].rate / self.verify['scan'].rate:.0%}",
                "",
            ),
            (
                "replay_live end to end, events/s (vs fold alone)",
                fmt(self.replay_events / self.replay_s) + f" ({self.replay_s:.2f} s)",
                fmt(rb["fold"].rate),
                f"{self.replay_events / self.replay_s / rb['fold'].rate:.0%}",
                "",
            ),
            (
                "read-all pages of 1000, every payload decoded, events/s (vs eventsourcing, same decode)",
                fmt(rd["labctl"].rate),
                fmt(rd["es"].rate),
                f"{rd['labctl'].rate / rd['es'].rate:.0%}",
                "",
            ),
            (
                "read-all pages of 1000, payloads not touched, events/s (vs eventsourcing's raw records)",
                fmt(rd["labctl_raw"].rate),
                fmt(rd["es_raw"].rate),
                f"{rd['labctl_raw'].rate / rd['es_raw'].rate:.0%}",
                "",
            ),
            (
                "follower latency p50 / p99, ms (vs eventsourcing)",
                f"{p50:.2f} / {p99:.2f}",
                f"{e50:.2f} / {e99:.2f}",
                f"{p50 / e50:.0%} / {p99 / e99:.0%}",
                self.verdict(p50 < 5, "p50 < 5 ms"),
            ),
        ]

    @staticmethod
    def verdict(ok: bool, target: str) -> str:
        return f"{'PASS' if ok else 'FAIL'} {target}"

    def table(self) -> str:
        header = ("measure", "labctl", "baseline", "ratio", "target")
        rows = [header, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = [
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)

    def markdown(self) -> str:
        z = self.sizes
        lines = [
            "`bench/bench_eventstore.py`"
            + (" --quick" if z is QUICK else "")
            + ": every ratio is two cases measured in the same run on the same server, interleaved round by round "
            f"(median of {z.rounds} rounds for appends, {max(2, z.rounds - 2)} for rebuild and reads). "
            "Baselines: a bare one-row INSERT; COPY of pre-encoded rows into a copy of `events` "
            "(same columns, keys, indexes); a server-side cursor reading the columns `fold` reads and doing nothing; "
            "the `eventsourcing` library's `PostgresApplicationRecorder` (text ids, default settings) "
            "in its own database; "
            "for the 3,000-event run-log batches it runs with `enable_db_functions=True`, because its default "
            "pipelined insert hangs (psycopg pipeline deadlock) on batches over ~300 KB.",
            "",
            f"Machine: {self.machine}.",
            "",
            "| measure | labctl | baseline | ratio | target |",
            "|---|---:|---:|---:|---|",
        ]
        lines += [f"| {' | '.join(r)} |" for r in self.rows()]
        return "\n".join(lines)


# ------------------------------------------------------------ replay only

_REPLAY_CHILD = """
import resource, sys, time
from labctl.db import connect
from projections.engine import replay_live
with connect(sys.argv[1]) as conn:
    start = time.perf_counter()
    report = replay_live(conn)
    seconds = time.perf_counter() - start
print(report.events, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def replay_in(tree: Path, url: str) -> tuple[int, float, float]:
    """``replay_live`` of ``tree``'s code in a fresh process: events, seconds, peak resident MB."""
    out = subprocess.run(
        [sys.executable, "-c", _REPLAY_CHILD, url],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[0]), float(out[1]), float(out[2])


def replay_only(sizes: Sizes, against: Path | None) -> None:
    here = Path(__file__).resolve().parent.parent
    trees = {"this tree": here} | ({f"against {against}": against} if against else {})
    with server() as srv:
        url = srv.url(LABCTL_DB)
        with connect(url) as conn:
            ensure_schema(conn)
            for batch in run_log_batches(sizes.runs):
                append_batch(conn, batch)
        print(f"PostgreSQL {srv.version}; {sizes.runs * 3:,} events; {machine_line('')}")
        for r in range(sizes.rounds):
            for name in list(trees)[r % len(trees) :] + list(trees)[: r % len(trees)]:
                events, seconds, peak = replay_in(trees[name], url)
                print(f"round {r + 1} {name}: {events / seconds:,.0f} events/s ({seconds:.2f} s), peak {peak:,.0f} MB")


def batched_only(sizes: Sizes) -> None:
    with server() as srv:
        es = es_recorder(srv)
        with connect(srv.url(LABCTL_DB)) as conn:
            ensure_schema(conn)
            create_copy_target(conn)
            b = bench_batched(conn, es, sizes)
        es.datastore.close()
        print(f"PostgreSQL {srv.version}; {machine_line('')}; load average {os.getloadavg()[0]:.1f}")
    for r, (ours, copy) in enumerate(zip(b["labctl"].rates, b["copy"].rates, strict=True)):
        print(f"round {r + 1}: labctl {ours:,.0f} events/s, COPY {copy:,.0f}: {ours / copy:.0%}")
    ours, copy = b["labctl"].rate, b["copy"].rate
    print(f"median: labctl {ours:,.0f} events/s, COPY {copy:,.0f}: {ours / copy:.0%}")
    if "labctl_cpu" in b and "copy_cpu" in b:
        ours, copy = b["labctl_cpu"].rate, b["copy_cpu"].rate
        print(f"per CPU-second (client + server): labctl {ours:,.0f}, COPY {copy:,.0f}: {ours / copy:.0%}")


# ---------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 30 s)")
    parser.add_argument("--write", action="store_true", help="replace the '## Event store' section of bench/RESULTS.md")
    parser.add_argument("--only", choices=["replay", "batched"], help="run only this case (see the module's doc)")
    parser.add_argument("--against", type=Path, help="with --only replay: another checkout to alternate with")
    opts = parser.parse_args(argv)
    sizes = QUICK if opts.quick else FULL
    if opts.only == "replay":
        replay_only(sizes, opts.against)
        return
    if opts.only == "batched":
        batched_only(sizes)
        return
    # A plain `kill` still stops the embedded server we started (via server()'s finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started_at = time.perf_counter()

    with server() as srv:
        url = srv.url(LABCTL_DB)
        es = es_recorder(srv)
        with connect(url) as conn:
            ensure_schema(conn)
            create_copy_target(conn)
            step = lambda what: print(f"[{time.perf_counter() - started_at:6.1f}s] {what}", flush=True)  # noqa: E731

            step(f"writing the run log ({sizes.runs:,} runs x 3 events) to both stores")
            es_fn = es_recorder(srv, db_functions=True)
            pop = populate(conn, es_fn, sizes)
            es_fn.datastore.close()
            total = pop[2]
            step("rebuild: fold vs bare scan")
            rebuild = bench_rebuild(conn, sizes, total)
            step("audit verify: chain vs bare scan")
            verified = bench_verify(conn, sizes, total)
            step("replay_live")
            report = replay_live(conn)
            step("read-all pages")
            read = bench_read_all(conn, es, sizes, total)
            step("single appends")
            single = bench_single(conn, es, sizes)
            step("batched appends vs COPY")
            batched = bench_batched(conn, es, sizes)
            step("follower latency")
            follow_ours = bench_follow_labctl(url, conn, sizes.follow)
        follow_es = bench_follow_es(srv, sizes.follow)
        es.datastore.close()
        step("done")
        result = Report(
            sizes=sizes,
            machine=machine_line(f"PostgreSQL {srv.version} ({'embedded' if srv.home else 'LABCTL_DATABASE_URL'})"),
            single=single,
            batched=batched,
            populate=pop,
            rebuild=rebuild,
            verify=verified,
            replay_s=report.total_seconds,
            replay_events=report.events,
            read=read,
            follow_ours=follow_ours,
            follow_es=follow_es,
        )

    print()
    print(result.table())
    print()
    markdown = result.markdown()
    report_section("Event store", markdown, write=opts.write)


if __name__ == "__main__":
    main()
