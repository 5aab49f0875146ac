"""Projections: inline application, catch-up, rebuild, as-of snapshots and audit diffs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

import events
import projections
from events import NewEvent
from events.types import RunFinished, RunStarted, RunSubmitted


def _submitted(run_id: str) -> RunSubmitted:
    return RunSubmitted(
        run_id=run_id, name="train", user="alice", executor="local", run_dir=f"/runs/{run_id}", recipe={"lr": 0.1}
    )


def _lifecycle(conn: psycopg.Connection[Any], run_id: str, exit_code: int) -> None:
    stream = f"run-{run_id}"
    projections.record(conn, [NewEvent(stream, _submitted(run_id), 0)])
    projections.record(conn, [NewEvent(stream, RunStarted(run_id=run_id, started_at=datetime.now(UTC)))])
    state = "succeeded" if exit_code == 0 else "failed"
    projections.record(conn, [NewEvent(stream, RunFinished(run_id=run_id, state=state, exit_code=exit_code))])


def _runs(conn: psycopg.Connection[Any], schema: str = "live") -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT id, status, exit_code FROM {schema}.runs ORDER BY id").fetchall()


def _unlogged(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """Tables of ``schema`` a crash would empty (none may be: the read models must survive one)."""
    query = (
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relpersistence <> 'p'"
    )
    return [r[0] for r in conn.execute(query, (schema,))]


def test_inline_projection_is_exact_right_after_each_append(conn: psycopg.Connection[Any]) -> None:
    projections.record(conn, [NewEvent("run-r1", _submitted("r1"), 0)])
    assert _runs(conn) == [("r1", "submitted", None)]
    _lifecycle(conn, "r2", 3)
    assert _runs(conn) == [("r1", "submitted", None), ("r2", "failed", 3)]
    assert projections.checkpoint(conn) == events.last_position(conn)


def test_events_appended_without_projecting_are_applied_before_the_next_inline_append(
    conn: psycopg.Connection[Any],
) -> None:
    events.append(conn, "run-r1", [_submitted("r1")], expected_version=0)
    projections.record(conn, [NewEvent("run-r2", _submitted("r2"), 0)])
    assert [r[0] for r in _runs(conn)] == ["r1", "r2"]


def test_catch_up_applies_bare_appends(conn: psycopg.Connection[Any]) -> None:
    events.append(conn, "run-r1", [_submitted("r1")], expected_version=0)
    assert projections.catch_up(conn) == 1
    assert _runs(conn) == [("r1", "submitted", None)]
    assert projections.catch_up(conn) == 0


def test_replay_swaps_in_an_identical_rebuild_and_repairs_a_damaged_row(conn: psycopg.Connection[Any]) -> None:
    for i, code in enumerate([0, 3, 0]):
        _lifecycle(conn, f"r{i}", code)
    before = conn.execute("SELECT * FROM live.runs ORDER BY id").fetchall()
    conn.execute("UPDATE live.runs SET status = 'succeeded' WHERE id = 'r1'")
    report = projections.replay_live(conn)
    assert report.events == 9 and report.position == events.last_position(conn)
    assert conn.execute("SELECT * FROM live.runs ORDER BY id").fetchall() == before
    indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'live'")}
    assert {"runs_pkey", "runs_created_at_idx", "runs_user_created_idx"} <= indexes
    assert _unlogged(conn, "live") == []


def test_a_replay_drops_what_a_replay_killed_before_its_swap_left_behind(conn: psycopg.Connection[Any]) -> None:
    from projections.engine import fold, write_schema

    _lifecycle(conn, "r0", 0)
    with conn.transaction():  # a replay's first step, committed; killed before the swap
        write_schema(conn, "live_rebuild_1700000000000", fold(conn))
    projections.replay_live(conn)
    schemas = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'live%'")}
    assert schemas == {"live"}
    assert conn.execute("SELECT status FROM live.runs WHERE id = 'r0'").fetchall() == [("succeeded",)]


def test_replay_keeps_appends_made_while_it_rebuilds(db_url: str, conn: psycopg.Connection[Any]) -> None:
    from labctl.db import connect

    for i in range(50):
        _lifecycle(conn, f"r{i}", 0)
    stop = threading.Event()
    written: list[str] = []

    def writer() -> None:
        with connect(db_url) as c:
            i = 0
            while not stop.is_set():
                projections.record(c, [NewEvent(f"run-w{i}", _submitted(f"w{i}"), 0)])
                written.append(f"w{i}")
                i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(3):
            projections.replay_live(conn)
    finally:
        stop.set()
        t.join()
    ids = {r[0] for r in conn.execute("SELECT id FROM live.runs")}
    assert set(written) <= ids
    assert projections.diff_live(conn)[1] == []


def test_as_of_snapshot_shows_the_past_and_is_read_only(conn: psycopg.Connection[Any]) -> None:
    projections.record(conn, [NewEvent("run-r1", _submitted("r1"), 0)])
    then = events.last_position(conn)
    projections.record(conn, [NewEvent("run-r1", RunFinished(run_id="r1", state="failed", exit_code=1))])
    report = projections.replay_as_of(conn, then)
    assert report.schema == f"asof_{then}"
    assert _runs(conn, report.schema) == [("r1", "submitted", None)]
    assert _runs(conn) == [("r1", "failed", 1)]
    assert _unlogged(conn, report.schema) == []
    with pytest.raises(psycopg.Error, match="read-only"):
        conn.execute(f"DELETE FROM {report.schema}.runs")


def test_audit_diff_names_a_tampered_projection_row(conn: psycopg.Connection[Any]) -> None:
    _lifecycle(conn, "r1", 3)
    assert projections.diff_live(conn)[1] == []
    conn.execute("UPDATE live.runs SET exit_code = 0, status = 'succeeded' WHERE id = 'r1'")
    conn.execute(
        "INSERT INTO live.runs SELECT 'ghost', name, user_name, status, executor, job_id, exit_code, signal, reason,"
        " run_dir, cache_key, producer_run_id, pipeline_id, stage_name, sweep_id, sweep_index, recipe_path, recipe,"
        " repo, repo_commit, repo_dirty, agent_id, cancel_requested, created_at, started_at, finished_at,"
        " updated_at, stream_version FROM live.runs WHERE id = 'r1'"
    )
    _, diffs = projections.diff_live(conn)
    by_key = {d.key[0]: d for d in diffs}
    assert by_key["r1"].problem == "differs"
    assert by_key["r1"].columns["status"] == ["succeeded", "failed"]
    assert by_key["ghost"].problem == "not in the log"


def _user(name: str) -> NewEvent:
    from events.types import UserImported

    return NewEvent(f"user-{name}", UserImported(name=name, created_at=datetime(2026, 1, 1, tzinfo=UTC)), 0)


def test_a_bulk_append_rebuilds_once_and_keeps_what_another_writer_appended_meanwhile(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """append_and_rebuild folds its own events from memory; a foreign event between its batches must not be lost."""
    from labctl.db import connect

    counts: list[int] = []
    with connect(db_url) as other:

        def meanwhile(n: int) -> None:
            counts.append(n)
            if n == 1:  # between the first and the second batch
                projections.record(other, [_user("someone-else")])

        projections.append_and_rebuild(conn, [[_user("a")], [_user("b"), _user("c")]], on_batch=meanwhile)
    assert counts == [1, 3]
    assert {r[0] for r in conn.execute("SELECT name FROM users")} == {"a", "b", "c", "someone-else"}
    assert projections.checkpoint(conn) == events.last_position(conn) == 4
    assert projections.diff_live(conn)[1] == []


@pytest.mark.parametrize("where", ["before", "between its batches"])
def test_a_bulk_append_rebuilds_without_the_events_of_others_that_no_longer_decode(
    where: str, db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """The rebuild after a bulk append skips checking the events it appended (they were just encoded), and
    only those: one that no longer decodes, before them or another writer's between them, stays out."""
    from labctl.db import connect
    from tests.test_server_rebuild import _raw

    def bad(name: str) -> list[NewEvent]:  # a name of the wrong type: the server would read it as text
        return [_raw(f"user-{name}", "UserImported", name=name, created_at='"2026-01-01T00:00:00Z"')]

    with connect(db_url) as other:
        if where == "before":
            with other.transaction():
                events.append_batch(other, bad("5"))

        def meanwhile(n: int) -> None:
            if where != "before" and n == 1:
                with other.transaction():
                    events.append_batch(other, bad("6"))

        projections.append_and_rebuild(conn, [[_user("a")], [_user("b")]], on_batch=meanwhile)
    assert sorted(r[0] for r in conn.execute("SELECT name FROM users")) == ["a", "b"]
    assert projections.checkpoint(conn) == events.last_position(conn) == 3
    assert projections.diff_live(conn)[1] == []


def _bad_user(name: str) -> NewEvent:
    """A UserImported that no longer decodes (its name is a number), which the server would read as text."""
    from tests.test_server_rebuild import _raw

    return _raw(f"user-{name}", "UserImported", name=name, created_at='"2026-01-01T00:00:00Z"')


def _users(conn: psycopg.Connection[Any]) -> list[str]:
    return sorted(r[0] for r in conn.execute("SELECT name FROM users"))


def test_a_replay_checks_again_only_what_was_appended_since_the_last_and_still_skips_what_does_not_decode(
    conn: psycopg.Connection[Any],
) -> None:
    from projections.engine import checked_through

    projections.record(conn, [_user("a"), _user("b")])
    projections.replay_live(conn)
    assert checked_through(conn) == 2  # every event so far decodes
    with conn.transaction():
        events.append_batch(conn, [_user("c"), _bad_user("5"), _user("d")])
    checked_tail: list[int] = []
    projections.replay_live(conn, progress=checked_tail.append)
    assert _users(conn) == ["a", "b", "c", "d"]
    assert checked_tail[0] == 2  # the first two counted as checked before the scan read anything
    assert checked_through(conn) == 3  # up to the event that does not decode, which the next one checks again
    projections.replay_live(conn)
    assert _users(conn) == ["a", "b", "c", "d"] and checked_through(conn) == 3
    assert projections.diff_live(conn)[1] == []


def test_a_replay_trusts_only_its_own_record_of_what_decodes_and_the_full_audit_trusts_none(
    conn: psycopg.Connection[Any],
) -> None:
    """The record is kept with the event types' fingerprint and the hash of its last event: one with another
    fingerprint or hash is ignored. One forged to cover an event that does not decode lets the next replay
    read that event as the server does, and the full audit, which decodes every event, names the row."""
    from projections.engine import _decode_fingerprint, checked_through

    with conn.transaction():
        events.append_batch(conn, [_user("a"), _bad_user("5")])
    projections.replay_live(conn)
    assert _users(conn) == ["a"] and checked_through(conn) == 1
    last_hash = conn.execute("SELECT encode(hash, 'hex') FROM labctl.events WHERE position = 2").fetchone()
    assert last_hash is not None

    def forge(fingerprint: str, digest: str) -> None:
        conn.execute("DELETE FROM live.projection_checkpoints WHERE name LIKE 'decoded %'")
        name = f"decoded {fingerprint} {digest}"
        conn.execute("INSERT INTO live.projection_checkpoints (name, position) VALUES (%s, 2)", (name,))

    for fingerprint, digest in [("0" * 16, last_hash[0]), (_decode_fingerprint(), "00" * 32)]:
        forge(fingerprint, digest)
        assert checked_through(conn) == 0
        projections.replay_live(conn)
        assert _users(conn) == ["a"]
    forge(_decode_fingerprint(), last_hash[0])
    projections.replay_live(conn)
    assert _users(conn) == ["5", "a"]
    diffs = projections.diff_live(conn)[1]
    assert [(d.table, d.key, d.problem) for d in diffs] == [("users", ["5"], "not in the log")]


def test_a_bulk_append_stopped_midway_leaves_read_models_that_bring_up_to_date_repairs(
    conn: psycopg.Connection[Any],
) -> None:
    def stop(n: int) -> None:
        if n == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        projections.append_and_rebuild(conn, [[_user("a")], [_user("b")]], on_batch=stop)
    assert events.last_position(conn) == 1 and projections.checkpoint(conn) == 0
    projections.bring_up_to_date(conn)
    assert [r[0] for r in conn.execute("SELECT name FROM users")] == ["a"]
    assert projections.checkpoint(conn) == 1 and projections.diff_live(conn)[1] == []


def test_a_batch_reads_its_rows_together_and_leaves_what_one_event_at_a_time_would(
    conn: psycopg.Connection[Any],
) -> None:
    """apply_inline reads the rows a batch touches in one query per table (single and composite keys,
    rows there and rows not yet there); the read models must be what applying each event alone gives."""
    from events.types import AliasSet, ArtifactRegistered, OutputLinked

    def artifact(i: int) -> list[NewEvent]:
        aid = f"a{i}"
        return [
            NewEvent(
                f"artifact-{aid}",
                ArtifactRegistered(artifact_id=aid, hash=f"h{i}", kind="dataset", path="/p", user="alice"),
            ),
            NewEvent(f"run-r{i}", OutputLinked(run_id=f"r{i}", role="out", artifact_id=aid, path="/p")),
            NewEvent("alias-alice/shared", AliasSet(user="alice", alias="shared", artifact_id=aid)),
            NewEvent(f"alias-alice/own-{i}", AliasSet(user="alice", alias=f"own-{i}", artifact_id=aid)),
        ]

    for i in range(4):
        projections.record(conn, [NewEvent(f"run-r{i}", _submitted(f"r{i}"), 0)])
    projections.record(conn, [*artifact(0)])  # an alias row that the batch below then moves
    batch = [NewEvent(f"run-r{i}", RunStarted(run_id=f"r{i}", started_at=datetime.now(UTC))) for i in range(4)]
    batch += [NewEvent(f"run-r{i}", RunFinished(run_id=f"r{i}", state="failed", exit_code=i)) for i in range(1, 4)]
    batch += [e for i in (1, 2) for e in artifact(i)]
    batch.append(NewEvent("run-r9", _submitted("r9"), 0))  # a row the batch creates
    projections.record(conn, batch)
    assert _runs(conn) == [
        ("r0", "running", None),
        ("r1", "failed", 1),
        ("r2", "failed", 2),
        ("r3", "failed", 3),
        ("r9", "submitted", None),
    ]
    aliases = conn.execute("SELECT alias, artifact_id FROM live.aliases ORDER BY alias").fetchall()
    assert aliases == [("own-0", "a0"), ("own-1", "a1"), ("own-2", "a2"), ("shared", "a2")]
    # and exactly what a rebuild from the log gives, every table
    assert projections.diff_live(conn)[1] == []


def test_work_produced_ahead_in_a_thread_arrives_in_order_fails_loudly_and_stops_when_dropped() -> None:
    """``ahead`` runs an import's planning (and a replay's page fetches) in a thread: what it yields, its
    errors and its clean-up must reach the caller as if it ran inline."""
    import contextlib

    from projections.ahead import ahead

    assert list(ahead(iter(range(100)), depth=3)) == list(range(100))

    def failing() -> Any:
        yield 1
        raise ValueError("the source went away")

    with pytest.raises(ValueError, match="the source went away"):
        list(ahead(failing()))

    released: list[str] = []
    produced: list[int] = []

    def holding() -> Any:
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:  # a cursor or a connection, in the real producers
            released.append(threading.current_thread().name)

    with contextlib.closing(ahead(holding(), depth=2, name="producer")) as items:
        assert next(items) == 0
    # Closed: the producer stopped within a few items and released what it held, in its own thread.
    assert released == ["producer"] and len(produced) < 10
