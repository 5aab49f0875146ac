"""Metrics: ingesting 1M logged points, and `labctl metrics` at 100k points, each against its peer.

1. Ingest: a metrics.jsonl of 250,000 lines x 4 metrics (1,000,000 points) written by
   ``labctl.log``'s writer, ingested by ``labctl.metrics_ingest.ingest`` (read, parse,
   MetricsLogged events of 2,000 points, append + inline projection of every point,
   in 32 MB transactions) into database ``bench_metrics_a``; vs. a bare
   ``append_batch`` of the very same events (no parsing, no projection) into
   ``bench_metrics_b``. Points/s and events/s for both.
2. ``labctl metrics RUN`` (a subprocess, table of 25,000 steps x 4 metrics = 100k
   points) and ``labctl metrics RUN --json``, vs. the SQL behind them run in-process
   (``metrics_of``) and vs. ``labctl show RUN`` (the same CLI start and connection), interleaved, medians.

    PYTHONPATH=. python bench/bench_metrics.py [--quick] [--write]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (
    bench_server,
    interleaved_times,
    labctl_argv,
    machine_line,
    markdown_table,
    median,
    report_section,
    run_quiet,
    step_printer,
    timed,
)

import events
import projections
from events import EventMeta, NewEvent
from events.types import RunSubmitted
from labctl.db import Database, connect, ensure_schema
from labctl.metrics import metrics_of
from labctl.metrics_file import MetricsWriter, metrics_path
from labctl.metrics_ingest import READ_BYTES, batches_of, ingest, stream_of

HEADING = "Metrics: ingest and `labctl metrics`"
META = EventMeta(actor="bench")


def write_file(run_dir: Path, lines: int) -> int:
    writer = MetricsWriter(metrics_path(run_dir))
    for step in range(lines):
        writer.log(step, loss=1.0 / (step + 1), accuracy=step / lines, lr=0.001, grad_norm=(step % 97) / 10)
    writer.close()
    return metrics_path(run_dir).stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100k points and 10k for the CLI (smoke run)")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    lines = 25_000 if args.quick else 250_000
    cli_lines = 2_500 if args.quick else 25_000
    rounds = 3 if args.quick else 5
    say = step_printer()
    with bench_server(["bench_metrics_a", "bench_metrics_b"]) as server, tempfile.TemporaryDirectory() as tmp:
        url_a, url_b = server.url("bench_metrics_a"), server.url("bench_metrics_b")
        for url in (url_a, url_b):
            with connect(url) as c:
                ensure_schema(c)
        run_dir = Path(tmp) / "run"
        size = write_file(run_dir, lines)
        points = lines * 4
        say(f"wrote {lines:,} lines ({points:,} points, {size / 1e6:.0f} MB)")

        with Database(url_a) as db:
            ingest_s = timed(lambda: ingest(db.run, "run_bench", run_dir, META, final=True))
            n_events = events.stream_version(db.conn, stream_of("run_bench"))
            stored = db.conn.execute("SELECT count(*) FROM metrics WHERE run_id = 'run_bench'").fetchone()
        assert stored == (points,), stored
        say(f"ingest: {ingest_s:.1f}s for {n_events} events")

        # The peer: the same events, already built, appended bare in the same 32 MB transactions.
        data = metrics_path(run_dir).read_bytes()
        chunks = []
        offset = 0
        while offset < len(data):
            found, end = batches_of("run_bench", data[offset : offset + READ_BYTES], offset, final=True)
            chunks.append(found)
            offset = end
        with connect(url_b) as conn:

            def bare() -> None:
                version = 0
                for found in chunks:
                    batch = [
                        NewEvent(stream_of("run_bench"), e, version if i == 0 else None) for i, e in enumerate(found)
                    ]
                    with conn.transaction():
                        events.append_batch(conn, batch, meta=META)
                    version += len(found)

            bare_s = timed(bare)
        say(f"bare append: {bare_s:.1f}s")

        # labctl metrics at 100k points
        cli_dir = Path(tmp) / "cli"
        write_file(cli_dir, cli_lines)
        with Database(url_a) as db:
            submitted = RunSubmitted(
                run_id="run_cli", name="bench", user="bench", executor="local", run_dir=str(cli_dir), recipe={}
            )
            projections.record(db.conn, [NewEvent("run-run_cli", submitted, 0)])
            ingest(db.run, "run_cli", cli_dir, META, final=True)
        env = {**os.environ, "LABCTL_DATABASE_URL": url_a, "LABCTL_HOME": str(Path(tmp) / "home")}
        with connect(url_a) as conn:
            cases = {
                "labctl metrics RUN": lambda: run_quiet([*labctl_argv(), "metrics", "run_cli"], env),
                "labctl metrics RUN --json": lambda: run_quiet([*labctl_argv(), "metrics", "run_cli", "--json"], env),
                "metrics_of (the SQL, in-process)": lambda: metrics_of(conn, ["run_cli"]),
                "labctl show RUN (the same CLI start and connection, tiny output)": lambda: run_quiet(
                    [*labctl_argv(), "show", "run_cli"], env
                ),
            }
            times = interleaved_times(rounds, cases)
        say("labctl metrics timed")

    ingest_rate, bare_rate = points / ingest_s, points / bare_s
    rows = [
        [
            "ingest (`metrics_ingest.ingest`: read, parse, append, project)",
            f"{ingest_s:.1f} s",
            f"{ingest_rate:,.0f}",
            f"{n_events / ingest_s:,.1f}",
        ],
        [
            "bare `append_batch` of the same events (peer)",
            f"{bare_s:.1f} s",
            f"{bare_rate:,.0f}",
            f"{n_events / bare_s:,.1f}",
        ],
    ]
    cli_rows = [[name, f"{median(ts) * 1000:.0f} ms"] for name, ts in times.items()]
    sql_ms = median(times["metrics_of (the SQL, in-process)"]) * 1000
    table_ms = median(times["labctl metrics RUN"]) * 1000
    floor_ms = median(times["labctl show RUN (the same CLI start and connection, tiny output)"]) * 1000
    body = "\n".join(
        [
            machine_line(server.describe()) + f"; load average {os.getloadavg()[0]:.0f} at the end",
            "",
            f"Ingest of {points:,} points ({lines:,} lines x 4 metrics, {size / 1e6:.0f} MB, "
            f"{n_events} MetricsLogged events of 2,000 lines):",
            "",
            markdown_table(["what", "time", "points/s", "events/s"], rows),
            "",
            f"Ingest is {ingest_s / bare_s:.1f}x the bare append of the same events: the difference is "
            "reading and parsing the file and projecting every point into `metrics` (one row per run, name, step).",
            "",
            f"`labctl metrics` at {cli_lines * 4:,} points ({cli_lines:,} steps x 4 metrics), "
            f"medians of {rounds} rounds:",
            "",
            markdown_table(["what", "median"], cli_rows),
            "",
            f"The table costs {table_ms / sql_ms:.1f}x its SQL run in-process, and {table_ms - floor_ms:.0f} ms "
            "over `labctl show` of the same run (the CLI's start, config, connection).",
        ]
    )
    report_section(HEADING, body, write=args.write)


if __name__ == "__main__":
    main()
