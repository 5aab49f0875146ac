"""A rebuild computes the runs table in the server (projections/queries.sql runs_rebuild) while appends
project it in Python (projections/runs.py): both must give the same rows, field by field."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import psycopg
import pytest

import events
from events import NewEvent
from events.types import (
    CancelRequested,
    JobSubmitted,
    RunCacheHit,
    RunClaimed,
    RunCoalesced,
    RunFinished,
    RunImported,
    RunPending,
    RunStarted,
    RunStatusImported,
    RunSubmitted,
    SubmissionIntended,
)
from projections.engine import catch_up, diff_live, replay_as_of, replay_live
from projections.runs import RUNS, TERMINAL_STATES
from tests.conftest import run_cli
from tests.test_import import _source, registry  # noqa: F401 (registry: the fixture)
from tests.test_pipelines_acceptance import DATA

_COLUMNS = ", ".join(RUNS.columns)


def _runs(conn: psycopg.Connection[Any], schema: str = "live") -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT {_COLUMNS} FROM {schema}.runs ORDER BY id").fetchall()


class _RawEvent(msgspec.Struct, frozen=True):
    """An event written as given (JSON our own encoder never produces): ``type_name`` is its type."""

    type_name: str
    doc: msgspec.Raw


def _raw(stream: str, type_name: str, doc: str) -> NewEvent:
    return NewEvent(stream, _RawEvent(type_name, msgspec.Raw(doc.encode())))  # type: ignore[arg-type]


def _varied_log(rng: random.Random, runs: int) -> list[NewEvent]:
    """Every run event type, in orders the real code produces and orders it never does (starts after
    ends, updates before the run exists, resubmissions, imports over submissions): each run's events
    shuffled into one log."""
    states = sorted(TERMINAL_STATES | {"running", "submitted", "weird"})
    t0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)

    def when() -> datetime | None:
        pick = rng.random()
        if pick < 0.2:
            return None
        zone = timezone(timedelta(hours=rng.choice([0, 5, -7]), minutes=rng.choice([0, 30])))
        return (t0 + timedelta(seconds=rng.randrange(10**6), microseconds=rng.randrange(10**6))).astimezone(zone)

    def maybe(value: str) -> str | None:
        return rng.choice([value, None, ""])

    per_run: list[list[NewEvent]] = []
    for i in range(runs):
        rid = f"run_{i:04d}"
        stream = f"run-{rid}"
        common = dict(run_id=rid, name=f"n{i}", user=rng.choice(["alice", "bob"]), executor="local")
        recipe = {"command": f"echo {i}", "lr": rng.choice([0.1, 1e-5, 3]), "nested": {"a": [1, None, "x"]}}
        kinds = rng.choices(
            [
                "pending",
                "submitted",
                "imported",
                "cache_hit",
                "coalesced",
                "claimed",
                "intended",
                "job",
                "started",
                "finished",
                "cancel",
                "status_imported",
            ],
            weights=[2, 3, 1, 1, 1, 2, 1, 2, 3, 3, 1, 1],
            k=rng.randrange(1, 12),
        )
        mine: list[NewEvent] = []
        for kind in kinds:
            e: Any
            if kind == "pending":
                e = RunPending(
                    **common,
                    run_dir=f"/r/{rid}",
                    recipe=recipe,
                    pipeline_id="p1",
                    stage_name="s",
                    parents=["a"],
                    recipe_path=maybe("r.toml"),
                    sweep_id=maybe("sw"),
                    sweep_index=rng.choice([None, 3]),
                )
            elif kind == "submitted":
                e = RunSubmitted(
                    **common,
                    run_dir=f"/r/{rid}/{len(mine)}",
                    recipe=recipe,
                    recipe_path=maybe("r.toml"),
                    cache_key=maybe("ck"),
                    repo=maybe("git@x"),
                    repo_commit=maybe("abc"),
                    repo_dirty=rng.choice([None, True, False]),
                    pipeline_id=maybe("p2"),
                    stage_name=maybe("t"),
                    sweep_id=maybe("sw2"),
                    sweep_index=rng.choice([None, 0, 7]),
                )
            elif kind == "imported":
                e = RunImported(
                    **common,
                    status=rng.choice(states),
                    run_dir="/old",
                    recipe=recipe,
                    recipe_hash="h",
                    context={},
                    repo="git@y",
                    source_path="/db",
                    created_at=when() or t0,
                    finished_at=when(),
                    job_id=maybe("77"),
                    cache_key=maybe("ck2"),
                    producer_run_id=maybe("run_0000"),
                    pipeline_id=maybe("p3"),
                    stage_name=maybe("u"),
                    repo_commit=maybe("def"),
                )
            elif kind == "cache_hit":
                e = RunCacheHit(run_id=rid, producer_run_id=f"run_p{i}", cache_key="ck")
            elif kind == "coalesced":
                e = RunCoalesced(run_id=rid, producer_run_id=f"run_q{i}", cache_key="ck")
            elif kind == "claimed":
                e = RunClaimed(run_id=rid, agent_id=rng.choice(["agent-1", "agent-2"]))
            elif kind == "intended":
                e = SubmissionIntended(run_id=rid, executor="slurm", job_name="j", agent_id=maybe("agent-3"))
            elif kind == "job":
                e = JobSubmitted(
                    run_id=rid, executor="slurm", job_id=rng.choice(["1", "2", ""]), agent_id=maybe("agent-4")
                )
            elif kind == "started":
                e = RunStarted(run_id=rid, started_at=when() or t0, job_id=maybe("99"))
            elif kind == "finished":
                e = RunFinished(
                    run_id=rid,
                    state=rng.choice(states),
                    exit_code=rng.choice([None, 0, 1, -9]),
                    signal=rng.choice([None, 9]),
                    reason=maybe("why"),
                    started_at=when(),
                    finished_at=when(),
                )
            elif kind == "cancel":
                e = CancelRequested(run_id=rid, actor="alice")
            else:
                e = RunStatusImported(run_id=rid, status=rng.choice(states), finished_at=when(), job_id=maybe("88"))
            mine.append(NewEvent(stream, e))
        per_run.append(mine)
    # Interleave the runs' events, each run's in its own order.
    log: list[NewEvent] = []
    while per_run:
        mine = rng.choice(per_run)
        log.append(mine.pop(0))
        if not mine:
            per_run.remove(mine)
    return log


def _appended(conn: psycopg.Connection[Any], log: list[NewEvent], rng: random.Random) -> None:
    """``log`` appended in batches of random sizes (so that events get their own recorded_at times)."""
    while log:
        n = rng.randrange(1, 40)
        events.append_batch(conn, log[:n])
        log = log[n:]


def test_a_rebuild_computes_the_same_runs_as_projecting_each_append(conn: psycopg.Connection[Any]) -> None:
    rng = random.Random(15)
    _appended(conn, _varied_log(rng, 400), rng)
    # Events that do not decode as their type: the handlers skip them, so must the server.
    events.append_batch(
        conn,
        [
            _raw("run-run_0001", "RunFinished", '{"run_id": "run_0001", "state": 3}'),
            _raw("run-run_0002", "RunSubmitted", '{"run_id": "run_0002", "name": "x"}'),
            _raw("run-run_0003", "RunStarted", '{"run_id": "run_0003", "started_at": "yesterday"}'),
        ],
    )
    catch_up(conn)  # the handlers, event by event
    projected = _runs(conn)

    assert diff_live(conn) == (events.last_position(conn), [])
    replay_live(conn)  # the server's query
    rebuilt = _runs(conn)
    assert len(rebuilt) == len(projected) > 250
    for want, got in zip(projected, rebuilt, strict=True):
        assert dict(zip(RUNS.columns, got, strict=True)) == dict(zip(RUNS.columns, want, strict=True))

    # The log exercised each case the query distinguishes.
    by_status = {r[3] for r in projected}
    assert TERMINAL_STATES | {"created", "submitted", "running", "awaiting_peer"} <= by_status
    assert {r[22] for r in projected} == {True, False}  # cancel_requested
    assert any(r[24] is not None for r in projected) and any(r[24] is None for r in projected)  # started_at


@pytest.mark.parametrize("streams", [9, 1])
def test_runs_whose_events_are_on_other_streams_are_rebuilt_the_same(
    conn: psycopg.Connection[Any], streams: int
) -> None:
    """A rebuild splits the runs by the stream of their events (labctl appends a run's to its own): a log
    where some are on other streams still rebuilds to the rows the handlers made. (With one other stream,
    one part fails and the other does not: the rows that one filled are computed again, not kept twice.)"""
    rng = random.Random(7)
    log = [
        NewEvent(f"elsewhere-{rng.randrange(streams)}", e.event) if rng.random() < 0.2 else e
        for e in _varied_log(rng, 80)
    ]
    _appended(conn, log, rng)  # (every event decodes: a rebuild that finds one that does not computes it again)
    catch_up(conn)
    projected = _runs(conn)
    assert len(projected) > 50

    replay_live(conn)
    assert _runs(conn) == projected


def test_the_world_as_of_a_past_position_has_the_runs_as_they_stood_then(conn: psycopg.Connection[Any]) -> None:
    rng = random.Random(3)
    log = _varied_log(rng, 60)
    _appended(conn, log[: len(log) // 2], rng)
    catch_up(conn)
    then, before = events.last_position(conn), _runs(conn)
    _appended(conn, log[len(log) // 2 :], rng)
    catch_up(conn)
    assert _runs(conn) != before

    report = replay_as_of(conn, then)
    assert _runs(conn, report.schema) == before


def test_the_server_agrees_with_the_handlers_on_the_runs_labctl_records(
    conn: psycopg.Connection[Any],
    env: dict[str, str],
    registry: Any,  # noqa: F811
) -> None:
    """Runs as the real code paths record them: a pipeline's waiting stages submitted later, a failing
    pipeline's dependents, a sweep, a second identical run (a cache hit), a queued run cancelled, and an
    original registry imported twice (its runs, then a status change): the rows each append projected
    are the server's, field by field, and the audit finds nothing."""
    run_cli(env, "run-pipeline", str(DATA / "diamond" / "pipeline.toml"), "--wait", check=True)
    run_cli(env, "run-pipeline", str(DATA / "midfail" / "pipeline.toml"), "--wait")
    run_cli(env, "run-sweep", str(DATA / "sweep" / "point_fail.toml"), "--wait")
    for _ in range(2):
        run_cli(env, "run", str(DATA / "evals" / "train_alone.toml"), "--wait", check=True)
    queued = run_cli(env, "run", str(DATA / "evals" / "train_alone.toml"), "--no-cache", check=True).stdout
    run_cli(env, "cancel", re.search(r"^run_id: (\S+)$", queued, re.M).group(1), check=True)  # type: ignore[union-attr]
    src, _ = registry("0003")
    run_cli(env, "import", "--from", src, check=True)
    running = _source(src, "SELECT id FROM runs WHERE status = 'running' ORDER BY id")[0][0]
    with psycopg.connect(src, autocommit=True) as c:
        c.execute("UPDATE runs SET status = 'succeeded', finished_at = created_at + 100 WHERE id = %s", (running,))
    run_cli(env, "import", "--from", src, check=True)
    projected = _runs(conn)

    assert diff_live(conn) == (events.last_position(conn), [])  # the handlers' rows against the query's
    replay_live(conn)
    assert _runs(conn) == projected
    statuses = {r[3] for r in projected}
    assert {"succeeded", "failed", "cache_hit", "cancelled", "dependency_failed"} <= statuses, statuses
    assert any(r[0] == running and r[3] == "succeeded" for r in projected)
