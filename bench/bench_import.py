"""`labctl import` of a 100k-run original registry, against a bare COPY of the same rows into our log.

An original registry (newest schema, DDL in tests/original) is filled the way a
team's looks (pipelines with checkpoint streams and evals, sweeps, tracking,
the original's own events rows; artifacts listed, bytes not written) with about
``--runs`` runs. Measured in one run on one server:

- the import: source rows (every table) per second, and events appended per second;
- the baseline: COPY of exactly the events the import appended (same columns,
  pre-encoded) into a table shaped like ``labctl.events``: what moving the
  same rows costs with no hashing, no projections, no reading of the source;
- a second import with nothing new (target: under 5 s).

Usage: PYTHONPATH=. python bench/bench_import.py [--runs 100000] [--quick] [--keep-source] [--write]

Seeding 100k runs takes minutes: with ``LABCTL_DATABASE_URL`` set (a server that outlives the
run) and ``--keep-source``, the seeded registry is kept as database ``imp_src_<runs>`` and
reused by the next run with the same ``--runs``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Server,
    bench_server,
    machine_line,
    markdown_table,
    report_section,
    server_cpu_seconds,
    step_printer,
    verdict,
)
from labctl.db import connect, ensure_schema
from labctl.importer import import_registry
from tests.original.ddl import VERSIONS
from tests.original.seed import Seeder

SOURCE_TABLES = [
    "users",
    "pipelines",
    "runs",
    "artifacts",
    "artifact_aliases",
    "run_inputs",
    "run_outputs",
    "eval_requests",
    "tracking",
    "events",
]


def seed(url: str, runs: int) -> dict[str, int]:
    # One pipeline averages 3.5 runs (train, eval, and three checkpoint evals when it succeeds); a sweep 4.
    users = 100
    per_user = max(1, round(runs * 0.88 / 3.5 / users))
    sweeps = max(1, round(runs * 0.12 / 4 / users))
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(VERSIONS["0003"].encode())
        s = Seeder("0003", Path("/bench/store"), files=False)
        s.seed(users=users, pipelines_per_user=per_user, sweeps_per_user=sweeps)
        s.write(c)
        return {t: int(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in SOURCE_TABLES}  # type: ignore[index]


def kept_counts(server: Server, dbname: str) -> dict[str, int] | None:
    """The row counts of a registry kept by an earlier ``--keep-source`` run; None after creating it empty."""
    with psycopg.connect(server.url("postgres"), autocommit=True) as c:
        if c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is None:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            return None
    with psycopg.connect(server.url(dbname)) as c:
        if c.execute("SELECT to_regclass('public.events')").fetchone() == (None,):
            return None
        return {t: int(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in SOURCE_TABLES}  # type: ignore[index]


def cpu_seconds(url: str) -> float | None:
    """CPU seconds of this process and of the whole server so far (None: the server is elsewhere)."""
    server = server_cpu_seconds(url)
    return None if server is None else time.process_time() + server


def copy_baseline(dst: str, scratch: str) -> tuple[int, float, float | None]:
    """COPY the events the import appended, pre-encoded, into a bare table shaped like ours;
    (rows, seconds, CPU seconds of client and server).

    Same column types as ``labctl.events`` (data ``json``, meta ``jsonb``), its keys, and nothing else."""
    with connect(dst) as c:
        rows = c.execute(
            "SELECT position, stream, version, type, data::text, meta::text, recorded_at, hash FROM events "
            "ORDER BY position"
        ).fetchall()
    with psycopg.connect(scratch, autocommit=True) as c:
        c.execute(
            "CREATE TABLE events (position bigint PRIMARY KEY, stream text NOT NULL, version integer NOT NULL, "
            "type text NOT NULL, data json NOT NULL, meta jsonb NOT NULL, recorded_at timestamptz NOT NULL, "
            "hash bytea NOT NULL, UNIQUE (stream, version))"
        )
        cpu, started = cpu_seconds(scratch), time.perf_counter()
        with c.transaction(), c.cursor() as cur, cur.copy("COPY events FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        seconds, cpu_after = time.perf_counter() - started, cpu_seconds(scratch)
        return len(rows), seconds, None if cpu is None or cpu_after is None else cpu_after - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--write", action="store_true", help="Write the section into bench/RESULTS.md.")
    parser.add_argument("--quick", action="store_true", help="10,000 runs instead.")
    parser.add_argument(
        "--keep-source",
        action="store_true",
        help="Keep the seeded registry (database imp_src_<runs> of LABCTL_DATABASE_URL's server) and reuse it.",
    )
    parser.add_argument(
        "--batchwise", action="store_true", help="Also import projecting batch by batch (the path before bulk)."
    )
    args = parser.parse_args()
    if args.quick:
        args.runs = 10_000
    if args.keep_source and not os.environ.get("LABCTL_DATABASE_URL"):
        parser.error("--keep-source needs LABCTL_DATABASE_URL: the embedded server of a run is deleted after it")
    step = step_printer()
    kept = f"imp_src_{args.runs}"
    with bench_server(["imp_dst", "imp_copy", *([] if args.keep_source else ["imp_src"])]) as server:
        dst, scratch = server.url("imp_dst"), server.url("imp_copy")
        src = server.url(kept if args.keep_source else "imp_src")
        counts = kept_counts(server, kept) if args.keep_source else None
        if counts is None:
            step(f"seeding an original registry of ~{args.runs:,} runs")
            counts = seed(src, args.runs)
        source_rows = sum(counts.values())
        step(f"seeded {counts['runs']:,} runs, {source_rows:,} rows in all")
        with connect(dst) as c:
            ensure_schema(c)
        load_before = os.getloadavg()[0]
        cpu, client = cpu_seconds(dst), time.process_time()
        first = import_registry(dst, src, actor="bench", verify=False)
        cpu_after, client = cpu_seconds(dst), time.process_time() - client
        load_after = os.getloadavg()[0]
        first_cpu = None if cpu is None or cpu_after is None else cpu_after - cpu
        if first_cpu is not None:
            step(f"import CPU, client + server: {first_cpu:.1f}s (client {client:.1f}s)")
        how = "bulk, read models rebuilt once" if first.rebuilt_read_models else "projected batch by batch"
        step(f"import: {first.events_appended:,} events in {first.seconds:.1f}s ({how})")
        again = import_registry(dst, src, actor="bench", verify=False)
        step(f"no-change re-run: {again.events_appended} events in {again.seconds:.2f}s")
        batchwise = None
        if args.batchwise:
            with connect(scratch) as c:
                ensure_schema(c)
            batchwise = import_registry(scratch, src, actor="bench", verify=False, bulk=False)
            step(f"import projecting batch by batch: {batchwise.seconds:.1f}s")
            with psycopg.connect(server.url("postgres"), autocommit=True) as c:
                c.execute("DROP DATABASE imp_copy WITH (FORCE)")
                c.execute("CREATE DATABASE imp_copy")
        copied, copy_s, copy_cpu = copy_baseline(dst, scratch)
        step(f"COPY baseline: {copied:,} rows in {copy_s:.1f}s (CPU {copy_cpu or 0:.1f}s)")

    rate = source_rows / first.seconds
    ev_rate = first.events_appended / first.seconds
    copy_rate = copied / copy_s
    table = markdown_table(
        ["measure", "labctl import", "baseline", "ratio", "target"],
        [
            [
                f"first import of {counts['runs']:,} runs, s",
                f"{first.seconds:.1f}",
                "",
                "",
                verdict(first.seconds < 60, "< 60 s"),
            ],
            *(
                [
                    [
                        "first import projecting batch by batch (the path small imports take), s (vs bulk)",
                        f"{batchwise.seconds:.1f}",
                        f"{first.seconds:.1f}",
                        f"{batchwise.seconds / first.seconds:.2f}x",
                        "",
                    ]
                ]
                if batchwise is not None
                else []
            ),
            [
                "source rows/s (vs COPY of the appended events, rows/s)",
                f"{rate:,.0f}",
                f"{copy_rate:,.0f}",
                f"{rate / copy_rate:.0%}",
                "",
            ],
            [
                "events appended/s (vs the same COPY)",
                f"{ev_rate:,.0f}",
                f"{copy_rate:,.0f}",
                f"{ev_rate / copy_rate:.0%}",
                "",
            ],
            *(
                [
                    [
                        "events appended per CPU-second, client + server (vs the same COPY)",
                        f"{first.events_appended / first_cpu:,.0f}",
                        f"{copied / copy_cpu:,.0f}",
                        f"{first.events_appended / first_cpu / (copied / copy_cpu):.0%}",
                        "",
                    ]
                ]
                if first_cpu and copy_cpu
                else []
            ),
            [
                "re-run with nothing new, s (events appended)",
                f"{again.seconds:.2f} ({again.events_appended})",
                "",
                "",
                verdict(again.seconds < 5 and again.events_appended == 0, "< 5 s, 0 events"),
            ],
        ],
    )
    rows_line = ", ".join(f"{t} {n:,}" for t, n in counts.items())
    body = (
        "`bench/bench_import.py`: an original registry (schema 0001-0003, DDL in tests/original) seeded like a "
        f"team's ({rows_line}; artifact bytes not written, so integrity reads `missing`), imported with "
        f"`import_registry` (`--no-verify`), into a fresh database ({how}); then imported again with nothing new. "
        "With `--batchwise`, also imported into a second fresh database projecting batch by batch (`bulk=False`), "
        "as every import did before the bulk path. "
        f"Baseline: COPY of the {copied:,} events the import appended (pre-encoded, same columns, primary key "
        "and (stream, version) key) into a bare table on the same server: no hashing, no projections, no source "
        "reads. The CPU row counts this process and every process of the server (the import's three connections, "
        "and the source's reads, which are on the same server); its baseline is the COPY's client and server.\n\n"
        f"Machine: {machine_line(server.describe())}; load average {load_before:.1f} before the first import, "
        f"{load_after:.1f} after it"
        + (f"; its CPU: client {client:.1f} s, server {first_cpu - client:.1f} s" if first_cpu is not None else "")
        + f".\n\n{table}"
    )
    report_section("Import from an original registry", body, write=args.write)


if __name__ == "__main__":
    main()
