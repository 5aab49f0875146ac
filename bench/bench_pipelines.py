"""Pipelines: advancer latency (parent's end -> child's submission) and recording a 10,000-stage pipeline.

On one Postgres (embedded in a temp home, unless LABCTL_DATABASE_URL is set):

1. advancer latency with 1, 100 and 1,000 two-stage pipelines in flight:
   the pipelines are created with ``labctl.pipelines.plan.create_pipeline`` (stage
   ``a`` writes a tiny dataset, stage ``b`` reads it; tiny bash commands;
   runs_base and artifact roots under a temp LABCTL_HOME), then a real
   ``labctl agent`` subprocess runs them all. Latency is read from the log:
   ``recorded_at`` of the parent's RunFinished -> ``recorded_at`` of the
   child's submission event (RunSubmitted, or RunCacheHit/RunCoalesced).
   The peer, in its own database on the same server, replays the same
   arrival process: the parents' RunFinished are appended at the same
   offsets as the agent recorded them (one transaction each), and a
   follower (``events.follow.follow``) appends a bare child event right
   after it sees each parent's -- the floor for "observe, then append";
2. plan + record a 10,000-stage pipeline (one root, 9,999 stages reading
   it, from a pipeline file generated here): ``load_pipeline`` +
   ``create_pipeline`` (which also submits the root), vs. ``append_batch``
   of the same events it recorded, bare, in the peer database.

    PYTHONPATH=. python bench/bench_pipelines.py [--quick] [--write] [--profile DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (
    bench_server,
    labctl_argv,
    machine_line,
    markdown_table,
    percentile,
    report_section,
    step_printer,
    text_table,
    verdict,
)

import events
from events import NewEvent, append, append_batch, last_position
from events.follow import follow
from events.types import RunFinished, RunSubmitted
from labctl.app import App
from labctl.db import Database, connect, ensure_schema
from labctl.files import load_pipeline, local_profile
from labctl.files.pipeline import PipelinePlan
from labctl.pipelines.plan import create_pipeline

DB, PEER_DB = "bench_pipelines", "bench_pipelines_peer"
HEADING = "Pipelines"
USER = "bench"
SUBMISSION_TYPES = ("RunSubmitted", "RunCacheHit", "RunCoalesced")

STAGE_A = """\
name = "stage-a"
command = ["bash", "-c", 'mkdir -p "$1" && echo "$2" > "$1/out.txt" && touch "$1/DONE"', "x",
           "{outputs.data.path}", "{params.i}"]

[params]
i = "0"

[outputs.data]
type = "dataset"
marker = "DONE"
alias = "bench-a-{run.id}"
"""

STAGE_B = """\
name = "stage-b"
command = ["bash", "-c", 'test -f "$1/out.txt"', "x", "{inputs.data.path}"]

[params]
i = "0"

[inputs.data]
type = "stage"
stage = "a"
role = "data"
"""

TWO_STAGES = """\
name = "two-stage"

[stages.a]
recipe = "a.toml"

[stages.b]
recipe = "b.toml"
"""


@dataclass(frozen=True)
class Sizes:
    in_flight: tuple[int, ...]
    wide: int  # stages of the big pipeline
    slots: int  # agent --slots


QUICK = Sizes(in_flight=(1, 10, 100), wide=1_000, slots=8)
FULL = Sizes(in_flight=(1, 100, 1_000), wide=10_000, slots=8)


# ------------------------------------------------------------------ setup


def write_files(folder: Path, wide: int) -> tuple[Path, Path]:
    """The two-stage pipeline and the wide one (one root, ``wide - 1`` stages reading it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.toml").write_text(STAGE_A)
    (folder / "b.toml").write_text(STAGE_B)
    (folder / "two.toml").write_text(TWO_STAGES)
    (folder / "leaf.toml").write_text(STAGE_B.replace('stage = "a"', 'stage = "s00000"'))
    lines = ['name = "wide"', "", "[stages.s00000]", 'recipe = "a.toml"']
    for k in range(1, wide):
        lines += ["", f"[stages.s{k:05d}]", 'recipe = "leaf.toml"']
    (folder / "wide.toml").write_text("\n".join(lines) + "\n")
    return folder / "two.toml", folder / "wide.toml"


def with_param(plan: PipelinePlan, value: str) -> PipelinePlan:
    """The plan with ``params.i = value`` in every stage (distinct cache keys per pipeline)."""
    stages = [
        msgspec.structs.replace(s, recipe=msgspec.structs.replace(s.recipe, params={"i": value})) for s in plan.stages
    ]
    return msgspec.structs.replace(plan, stages=stages)


def agent_env(url: str, tmp: Path) -> tuple[Path, dict[str, str]]:
    """A home under ``tmp`` and the environment a ``labctl agent`` subprocess gets: the bench's database,
    that home, the bench user, no cluster file of the machine's."""
    home = tmp / "home"
    env = dict(os.environ, LABCTL_DATABASE_URL=url, LABCTL_HOME=str(home), XDG_CONFIG_HOME=str(tmp / "xdg"))
    env["LABCTL_USER"] = USER
    env.pop("LABCTL_CLUSTER", None)
    return home, env


def make_app(url: str, home: Path) -> App:
    return App(config=local_profile(home), config_path=None, home=home, db=Database(url), user=USER)


# ------------------------------------------------------------------ labctl


@dataclass
class Flight:
    n: int
    create_s: float
    drain_s: float
    latencies: list[float]  # seconds, parent RunFinished -> child submission
    parent_offsets: list[float]  # seconds after the first parent's end, sorted


def run_in_flight(
    app: App, plan: PipelinePlan, n: int, env: dict[str, str], slots: int, profile: Path | None
) -> Flight:
    seed = uuid.uuid4().hex[:8]
    start = time.perf_counter()
    created = [create_pipeline(app, with_param(plan, f"{seed}-{k}")) for k in range(n)]
    create_s = time.perf_counter() - start
    ids = [c.pipeline_id for c in created]
    agent = [*labctl_argv(), "agent", "--slots", str(slots)]
    if profile is not None:
        agent = [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--subprocesses",
            "-o",
            str(profile / f"agent-{n}.svg"),
            "--",
            *agent,
        ]
    start = time.perf_counter()
    proc = subprocess.Popen(agent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    conn = app.db.conn
    try:
        deadline = time.monotonic() + 60 + n * 1.0
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pipelines WHERE id = ANY(%s) AND status = 'running'", (ids,)
            ).fetchone()
            if row is not None and row[0] == 0:
                break
            if proc.poll() is not None:
                raise SystemExit(f"the agent exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            raise SystemExit(f"{n} pipelines did not finish in time")
        drain_s = time.perf_counter() - start
    finally:
        proc.send_signal(signal.SIGINT if profile is not None else signal.SIGTERM)
        proc.wait(timeout=60)
    failed = conn.execute(
        "SELECT count(*) FROM pipelines WHERE id = ANY(%s) AND status <> 'succeeded'", (ids,)
    ).fetchone()
    assert failed is not None and failed[0] == 0, f"{failed[0] if failed else '?'} pipelines did not succeed"
    parents = {c.runs["a"][0]: c.runs["b"][0] for c in created}
    at = dict(
        conn.execute(
            "SELECT stream, min(recorded_at) FILTER (WHERE type = 'RunFinished') "
            "FROM events WHERE stream = ANY(%s) GROUP BY stream",
            ([f"run-{p}" for p in parents],),
        ).fetchall()
    )
    child_at = dict(
        conn.execute(
            "SELECT stream, min(recorded_at) FROM events WHERE stream = ANY(%s) AND type = ANY(%s) GROUP BY stream",
            ([f"run-{c}" for c in parents.values()], list(SUBMISSION_TYPES)),
        ).fetchall()
    )
    latencies = [(child_at[f"run-{c}"] - at[f"run-{p}"]).total_seconds() for p, c in parents.items()]
    ends = sorted(at.values())
    offsets = [(t - ends[0]).total_seconds() for t in ends]
    return Flight(n, create_s, drain_s, latencies, offsets)


# ------------------------------------------------------------------ the peer


def peer_in_flight(url: str, offsets: list[float], tag: str) -> list[float]:
    """Parents' RunFinished appended at ``offsets``; a follower appends each child's event on seeing it."""
    parent_of = {f"peer-{tag}-{k:05d}-a": f"peer-{tag}-{k:05d}-b" for k in range(len(offsets))}
    stop = threading.Event()
    with connect(url) as writer, connect(url) as reactor:
        after = last_position(writer)
        seen = threading.Event()
        remaining = [len(offsets)]

        def react() -> None:
            for page in follow(url, after, stop=stop):
                for e in page:
                    child = parent_of.get(e.stream)
                    if child is not None and e.type == "RunFinished":
                        submitted = RunSubmitted(
                            run_id=child, name="stage-b", user=USER, executor="local", run_dir="/tmp", recipe={}
                        )
                        append(reactor, child, [submitted], expected_version=0)
                        remaining[0] -= 1
                if remaining[0] == 0:
                    seen.set()
                    return

        thread = threading.Thread(target=react, daemon=True)
        thread.start()
        time.sleep(0.3)  # let it connect and LISTEN
        t0 = time.perf_counter()
        for k, (parent, offset) in enumerate(zip(parent_of, offsets, strict=True)):
            wait = t0 + offset - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            append(writer, parent, [RunFinished(run_id=f"p{k}", state="succeeded", exit_code=0)], expected_version=0)
        if not seen.wait(60):
            raise SystemExit("the peer follower did not see every parent")
        stop.set()
        thread.join(5)
        rows = writer.execute(
            "SELECT stream, recorded_at FROM events WHERE stream = ANY(%s)",
            ([*parent_of, *parent_of.values()],),
        ).fetchall()
    at = dict(rows)
    return [(at[c] - at[p]).total_seconds() for p, c in parent_of.items()]


# ------------------------------------------------------------------ wide pipeline


def record_wide(app: App, path: Path, peer_url: str) -> tuple[float, float, float, int]:
    """(plan s, plan + record s, bare append_batch s, events) for the wide pipeline."""
    conn = app.db.conn
    before = last_position(conn)
    start = time.perf_counter()
    plan = load_pipeline(path)
    plan_s = time.perf_counter() - start
    created = create_pipeline(app, plan)
    total = time.perf_counter() - start
    stages = len(created.runs)
    recorded = events.read_all(conn, before, 10 * stages + 100)
    pipeline_batch = [e for e in recorded if e.stream.startswith("pipeline-") or e.type == "RunPending"]
    bare = [NewEvent(f"peer-wide-{e.stream}", e.data, 0) for e in pipeline_batch]
    with connect(peer_url) as peer:
        start = time.perf_counter()
        append_batch(peer, bare)
        bare_s = time.perf_counter() - start
    return plan_s, total, bare_s, len(bare)


# ------------------------------------------------------------------ main


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.1f}x" if ours < 10 * theirs else f"{ours / theirs:.0f}x"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/10/100 pipelines in flight, 1,000 stages")
    parser.add_argument("--write", action="store_true", help=f"replace the '## {HEADING}' section of RESULTS.md")
    parser.add_argument("--profile", type=Path, help="record the agent with py-spy into this folder")
    opts = parser.parse_args(argv)
    sizes = QUICK if opts.quick else FULL
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    step = step_printer()
    if opts.profile:
        opts.profile.mkdir(parents=True, exist_ok=True)

    with bench_server([DB, PEER_DB], prefix="labctl-bench-pipelines-") as srv, tempfile.TemporaryDirectory() as tmp:
        url, peer_url = srv.url(DB), srv.url(PEER_DB)
        home, env = agent_env(url, Path(tmp))
        two, wide = write_files(Path(tmp) / "files", sizes.wide)
        for db in (url, peer_url):
            with connect(db) as c:
                ensure_schema(c)
        app = make_app(url, home)
        plan = load_pipeline(two)
        flights: list[Flight] = []
        peers: list[list[float]] = []
        for n in sizes.in_flight:
            step(f"{n} two-stage pipelines: create, then a labctl agent runs them")
            flight = run_in_flight(app, plan, n, env, sizes.slots, opts.profile)
            flights.append(flight)
            step(f"  peer: bare follower + append, same arrival offsets ({flight.parent_offsets[-1]:.1f} s span)")
            peers.append(peer_in_flight(peer_url, flight.parent_offsets, f"{n}"))
        step(f"a {sizes.wide:,}-stage pipeline: plan + record vs bare append_batch")
        wide_result = record_wide(app, wide, peer_url)
        app.close()
        step("done")
        machine = machine_line(srv.describe())

    report(opts, sizes, machine, flights, peers, wide_result)


def report(
    opts: argparse.Namespace,
    sizes: Sizes,
    machine: str,
    flights: list[Flight],
    peers: list[list[float]],
    wide: tuple[float, float, float, int],
) -> None:
    header = ("measure", "labctl", "baseline", "ratio", "target")
    rows = []
    for flight, peer in zip(flights, peers, strict=True):
        p50, p99 = percentile(flight.latencies, 50), percentile(flight.latencies, 99)
        b50, b99 = percentile(peer, 50), percentile(peer, 99)
        target = ""
        if flight.n == max(sizes.in_flight):
            target = verdict(p50 < 0.020 and p99 < 0.100, "p50 < 20 ms, p99 < 100 ms")
        rows.append(
            (
                f"{flight.n:,} in flight: parent end -> child submitted, p50 / p99 ms "
                "(vs bare follower + append, same arrivals)",
                f"{ms(p50)} / {ms(p99)}",
                f"{ms(b50)} / {ms(b99)}",
                f"{ratio(p50, b50)} / {ratio(p99, b99)}",
                target,
            )
        )
    for flight in flights:
        rows.append(
            (
                f"{flight.n:,} in flight: create_pipeline each, ms; agent drains all, s",
                f"{flight.create_s / flight.n * 1e3:.1f}; {flight.drain_s:.1f}",
                "",
                "",
                "",
            )
        )
    plan_s, total_s, bare_s, n_events = wide
    rows.append(
        (
            f"{sizes.wide:,}-stage pipeline: load_pipeline + create_pipeline, s (vs append_batch of its "
            f"{n_events:,} events, bare)",
            f"{total_s:.2f} (plan {plan_s:.2f})",
            f"{bare_s:.2f}",
            f"{total_s / bare_s:.1f}x",
            verdict(total_s < 2.0, "< 2 s") if sizes.wide >= 10_000 else "",
        )
    )
    print()
    print(text_table(header, rows))
    body = "\n".join(
        [
            "`bench/bench_pipelines.py`"
            + (" --quick" if opts.quick else "")
            + ": two-stage pipelines (tiny bash commands: `a` writes a dataset, `b` reads it) created with "
            f"`create_pipeline`, then one `labctl agent --slots {sizes.slots}` subprocess runs them all; latency is "
            "`recorded_at` of the parent's RunFinished to the child's RunSubmitted, from the log. "
            "The baseline replays the same arrivals (parents' RunFinished appended at the offsets the agent "
            "recorded them) in a second database on the same server, with an `events.follow` follower that "
            "appends a bare child event on seeing each parent's. The wide pipeline is one root and "
            f"{sizes.wide - 1:,} stages reading it, generated as a pipeline file; its baseline is one "
            "`append_batch` of the events `create_pipeline` recorded (PipelineCreated + one RunPending per stage), "
            "without projections. One run of each (the sizes are the repetitions).",
            "",
            f"Machine: {machine}.",
            "",
            markdown_table(header, rows),
        ]
    )
    report_section(HEADING, body, write=opts.write)


if __name__ == "__main__":
    main()
