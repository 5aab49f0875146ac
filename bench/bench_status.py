"""`labctl status` at 100k runs: the CLI against the bare SQL behind it, in the same run on the same server.

Fills database ``bench_status`` with 100,000 runs made the way labctl makes
them: RunSubmitted / RunStarted / RunFinished (and PipelineCreated +
RunPending for the pipeline runs) recorded through ``projections.record``
(append + inline projection) in large batches, over 20 users; ~1% are left
unfinished. Then, interleaved round by round (medians kept):

1. default ``labctl status`` for one user (a subprocess, wall time), vs. the
   SQL it runs (``runs.status_query``) executed with psycopg on an open
   connection in this process, vs. ``python -c pass``, and vs. a bare Python
   script that connects with psycopg and runs the same SQL (the floor any
   separate process pays);
2. ``labctl status --all --json`` (subprocess, rows/s), vs. the bare
   ``COPY (SELECT row_to_json(r) ...) TO STDOUT`` behind it run in-process.

    PYTHONPATH=. python bench/bench_status.py [--quick] [--write]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

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
    text_table,
    verdict,
)

import projections
from events import NewEvent
from events.types import (
    InputRef,
    OutputSpec,
    PipelineCreated,
    RunFinished,
    RunPending,
    RunStarted,
    RunSubmitted,
    StageSpec,
)
from labctl.db import connect, ensure_schema
from labctl.runs import status_query

DB = "bench_status"
HEADING = "Status at 100k runs"
USERS = [f"user{i:02d}" for i in range(20)]
WHO = "user07"
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
PIPELINE_EVERY = 50  # one run in 50 is a stage of a two-stage pipeline
UNFINISHED_EVERY = 100  # one run in 100 is still submitted or running


@dataclass(frozen=True)
class Sizes:
    runs: int
    rounds: int


QUICK = Sizes(runs=20_000, rounds=5)
FULL = Sizes(runs=100_000, rounds=15)


# ------------------------------------------------------------------ the data


def run_id(i: int) -> str:
    return f"run_{i:08d}bench{i % 997:04d}"


def submitted(i: int, pipeline: tuple[str, str] | None) -> RunSubmitted:
    rid, user = run_id(i), USERS[i % len(USERS)]
    key = hashlib.sha256(rid.encode()).hexdigest()
    return RunSubmitted(
        run_id=rid,
        name=f"train-{i % 13}",
        user=user,
        executor="local" if i % 3 else "slurm",
        run_dir=f"/scratch/{user}/labctl/runs/{rid}",
        recipe={
            "name": f"train-{i % 13}",
            "command": ["python", "train.py", "--lr", "{params.lr}", "--data", "{inputs.data.path}"],
            "params": {"lr": 0.001 * (1 + i % 7), "epochs": 20},
            "resources": {"gpus": 1, "cpus": 8, "mem": "32G", "time": "04:00:00"},
        },
        recipe_path="recipes/train.toml",
        cache_key=key,
        inputs=[InputRef(role="data", type="dataset", path="/scratch/shared/imagenet-64", artifact_id=key[:16])],
        outputs=[OutputSpec(role="ckpt", type="checkpoint", path="ckpt", alias=f"train-{i % 50}")],
        repo="git@github.com:lab/vision.git",
        repo_commit=key[:40],
        repo_dirty=False,
        pipeline_id=pipeline[0] if pipeline else None,
        stage_name=pipeline[1] if pipeline else None,
    )


def run_events(i: int) -> list[NewEvent]:
    """One run's life: pending (pipeline stages), submitted, started, finished (most of them)."""
    stream = f"run-{run_id(i)}"
    out: list[NewEvent] = []
    pipeline = None
    if i % PIPELINE_EVERY in (0, 1):
        pid = f"pipeline_bench{i // PIPELINE_EVERY:08d}"
        stage = "prep" if i % PIPELINE_EVERY == 0 else "train"
        pipeline = (pid, stage)
        sub = submitted(i, pipeline)
        pending = RunPending(
            run_id=sub.run_id,
            name=sub.name,
            user=sub.user,
            executor=sub.executor,
            run_dir=sub.run_dir,
            recipe=sub.recipe,
            pipeline_id=pid,
            stage_name=stage,
            parents=[] if stage == "prep" else ["prep"],
        )
        out.append(NewEvent(stream, pending, 0))
    out.append(NewEvent(stream, submitted(i, pipeline), len(out)))
    spread = (i // len(USERS)) % UNFINISHED_EVERY  # so every user has some
    if spread == 7:
        return out  # still queued
    at = T0 + timedelta(seconds=i)
    out.append(NewEvent(stream, RunStarted(run_id=run_id(i), started_at=at, host=f"gpu{i % 32:03d}"), len(out)))
    if spread == 8:
        return out  # still running
    state = "succeeded" if i % 10 else "failed"
    end = RunFinished(
        run_id=run_id(i),
        state=state,
        exit_code=0 if i % 10 else 1,
        started_at=at,
        finished_at=at + timedelta(seconds=3600),
    )
    out.append(NewEvent(stream, end, len(out)))
    return out


def pipeline_heads(lo: int, hi: int) -> list[NewEvent]:
    """PipelineCreated for the pipelines whose runs fall in ``[lo, hi)``."""
    out = []
    for i in range(lo, hi):
        if i % PIPELINE_EVERY == 0:
            pid = f"pipeline_bench{i // PIPELINE_EVERY:08d}"
            stages = [
                StageSpec(name="prep", run_ids=[run_id(i)]),
                StageSpec(name="train", run_ids=[run_id(i + 1)], parents=["prep"]),
            ]
            created = PipelineCreated(pipeline_id=pid, name="pretrain", user=USERS[i % len(USERS)], stages=stages)
            out.append(NewEvent(f"pipeline-{pid}", created, 0))
    return out


def batches(runs: int, per_batch: int = 1000) -> Iterator[list[NewEvent]]:
    for lo in range(0, runs, per_batch):
        hi = min(lo + per_batch, runs)
        batch = pipeline_heads(lo, hi)
        for i in range(lo, hi):
            batch += run_events(i)
        yield batch


def populate(conn: psycopg.Connection[Any], runs: int) -> tuple[int, float]:
    """Record the runs through the projections; (events, seconds)."""
    n, start = 0, time.perf_counter()
    for batch in batches(runs):
        projections.record(conn, batch)
        n += len(batch)
    conn.execute("VACUUM ANALYZE")
    return n, time.perf_counter() - start


# ------------------------------------------------------------------ the cases


class NullSink:
    def __init__(self) -> None:
        self.bytes = 0

    def write(self, chunk: bytes) -> None:
        self.bytes += len(chunk)

    def flush(self) -> None:
        pass


def bare_copy(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> int:
    """The COPY behind ``status --json``, rows thrown away; returns the row count."""
    n = 0
    with conn.cursor() as cur, cur.copy(f"COPY (SELECT row_to_json(r)::text FROM ({query}) r) TO STDOUT", params) as cp:
        for _chunk in cp:
            n += 1
    return n


BARE_SCRIPT = """
import json, sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True, options="-c search_path=live,labctl") as c:
    c.execute(sys.argv[2], json.loads(sys.argv[3])).fetchall()
"""


def explain(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> str:
    rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS OFF, TIMING OFF, SUMMARY ON) {query}", params).fetchall()
    return "\n".join(r[0] for r in rows)


# ------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.runs:,} runs, {QUICK.rounds} rounds")
    parser.add_argument("--write", action="store_true", help=f"replace the '## {HEADING}' section of RESULTS.md")
    opts = parser.parse_args(argv)
    sizes = QUICK if opts.quick else FULL
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    step = step_printer()

    with bench_server([DB], prefix="labctl-bench-status-") as srv, tempfile.TemporaryDirectory() as tmp:
        url = srv.url(DB)
        env = dict(
            os.environ,
            LABCTL_DATABASE_URL=url,
            LABCTL_HOME=str(Path(tmp) / "home"),
            XDG_CONFIG_HOME=str(Path(tmp) / "xdg"),
            LABCTL_USER=WHO,
        )
        env.pop("LABCTL_CLUSTER", None)
        env.pop("PYTHONUNBUFFERED", None)  # a user's shell; the unbuffered case is measured apart
        unbuffered = dict(env, PYTHONUNBUFFERED="1")
        labctl = labctl_argv()
        with connect(url) as conn:
            ensure_schema(conn)
            step(f"recording {sizes.runs:,} runs through projections.record")
            n_events, populate_s = populate(conn, sizes.runs)
            total = conn.execute("SELECT count(*) FROM runs").fetchone()
            assert total is not None and total[0] == sizes.runs, total

            mine_q, mine_p = status_query(user=WHO, state=None, everything=False)
            all_q, all_p = status_query(user=None, state=None, everything=True)
            mine_json = json.dumps(mine_p)
            shown = len(conn.execute(mine_q, mine_p).fetchall())
            plan = explain(conn, mine_q, mine_p)
            exported = bare_copy(conn, all_q, all_p)
            assert exported == sizes.runs, exported

            def cli_status() -> None:
                run_quiet([*labctl, "status"], env)

            def cli_json(environ: dict[str, str]) -> None:
                proc = subprocess.run(
                    [*labctl, "status", "--all", "--json"], env=environ, stdout=subprocess.PIPE, check=True
                )
                assert proc.stdout.count(b"\n") == sizes.runs

            cases = {
                "python -c pass": lambda: run_quiet([sys.executable, "-c", "pass"], env),
                "bare script": lambda: run_quiet([sys.executable, "-c", BARE_SCRIPT, url, mine_q, mine_json], env),
                "status SQL": lambda: conn.execute(mine_q, mine_p).fetchall(),
                "labctl status": cli_status,
                "COPY json": lambda: bare_copy(conn, all_q, all_p),
                "labctl status --all --json": lambda: cli_json(env),
                "same, PYTHONUNBUFFERED=1": lambda: cli_json(unbuffered),
            }
            for fn in cases.values():
                fn()  # warm caches (page cache, shared buffers, bytecode)
            step(f"timing, {sizes.rounds} interleaved rounds")
            times = interleaved_times(sizes.rounds, cases)
        step("done")
        machine = machine_line(srv.describe())

    ms = {name: median(ts) * 1e3 for name, ts in times.items()}
    cli_rate = sizes.runs / (ms["labctl status --all --json"] / 1e3)
    copy_rate = sizes.runs / (ms["COPY json"] / 1e3)
    unbuffered_rate = sizes.runs / (ms["same, PYTHONUNBUFFERED=1"] / 1e3)
    header = ("measure", "labctl", "baseline", "ratio", "target")
    rows = [
        (
            f"`labctl status` ({WHO}, {shown} rows) wall, ms (vs `python -c pass`)",
            f"{ms['labctl status']:.0f}",
            f"{ms['python -c pass']:.0f}",
            f"{ms['labctl status'] / ms['python -c pass']:.1f}x",
            verdict(ms["labctl status"] < 300, "< 300 ms"),
        ),
        (
            "`labctl status` wall, ms (vs a bare script: python + psycopg connect + the same SQL)",
            f"{ms['labctl status']:.0f}",
            f"{ms['bare script']:.0f}",
            f"{ms['labctl status'] / ms['bare script']:.1f}x",
            "",
        ),
        (
            "`labctl status` wall, ms (vs its SQL on an open connection, in-process)",
            f"{ms['labctl status']:.0f}",
            f"{ms['status SQL']:.1f}",
            f"{ms['labctl status'] / ms['status SQL']:.0f}x",
            "",
        ),
        (
            f"`labctl status --all --json`, rows/s ({sizes.runs:,} rows; vs the bare COPY behind it)",
            f"{cli_rate:,.0f}",
            f"{copy_rate:,.0f}",
            f"{cli_rate / copy_rate:.0%}",
            verdict(cli_rate >= 100_000, ">= 100k rows/s"),
        ),
        (
            "same with `PYTHONUNBUFFERED=1` (common in containers), rows/s (vs the bare COPY)",
            f"{unbuffered_rate:,.0f}",
            f"{copy_rate:,.0f}",
            f"{unbuffered_rate / copy_rate:.0%}",
            "",
        ),
    ]
    print()
    print(text_table(header, rows))
    print(f"\nEXPLAIN ANALYZE of the default status query ({WHO}):\n{plan}")
    body = "\n".join(
        [
            "`bench/bench_status.py`"
            + (" --quick" if opts.quick else "")
            + f": {sizes.runs:,} runs over {len(USERS)} users ({n_events:,} events: RunSubmitted/RunStarted/"
            "RunFinished, PipelineCreated + RunPending for the 2% that are pipeline stages, 1% left unfinished) "
            f"recorded through `projections.record` in batches of ~3,000 events "
            f"({n_events / populate_s:,.0f} events/s). CLI cases are subprocesses of the installed console "
            "script (wall time, output read and discarded, `PYTHONUNBUFFERED` unset unless stated); "
            "in-process cases run on an open autocommit connection. "
            f"Interleaved round by round, median of {sizes.rounds} rounds.",
            "",
            f"Machine: {machine}.",
            "",
            markdown_table(header, rows),
        ]
    )
    report_section(HEADING, body, write=opts.write)


if __name__ == "__main__":
    main()
