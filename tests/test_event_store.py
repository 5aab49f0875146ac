"""The event store against a real Postgres: append, concurrency, idempotency, immutability, following."""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

import msgspec
import psycopg
import pytest

import events
from events import ConcurrencyError, ImmutableLogError, NewEvent
from events.codec import Event, UnknownEvent
from events.follow import follow
from events.types import RunFinished
from labctl.db import Database, connect


class Noted(Event, frozen=True, kw_only=True):
    text: str
    n: int = 0


def test_append_returns_increasing_positions_and_versions(conn: psycopg.Connection[Any]) -> None:
    first = events.append(conn, "s-a", [Noted(text="x"), Noted(text="y")], expected_version=0)
    second = events.append(conn, "s-b", [Noted(text="z")], expected_version=0)
    assert first[1] == first[0] + 1 and second[0] > first[1]
    stored = events.read_stream(conn, "s-a")
    assert [(e.version, e.data) for e in stored] == [(1, Noted(text="x")), (2, Noted(text="y"))]
    assert events.stream_version(conn, "s-a") == 2


def test_stale_expected_version_raises_concurrency_error_naming_stream(conn: psycopg.Connection[Any]) -> None:
    events.append(conn, "s-a", [Noted(text="x")], expected_version=0)
    with pytest.raises(ConcurrencyError) as info:
        events.append(conn, "s-a", [Noted(text="late")], expected_version=0)
    assert "s-a" in str(info.value) and info.value.expected == 0 and info.value.actual == 1
    assert events.stream_version(conn, "s-a") == 1


def test_only_one_of_many_racing_writers_wins_a_stream_version(db_url: str) -> None:
    winners: list[int] = []
    losers: list[int] = []

    def race(i: int) -> None:
        with connect(db_url) as c:
            try:
                events.append(c, "cache-k", [Noted(text=str(i))], expected_version=0)
                winners.append(i)
            except ConcurrencyError:
                losers.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 7


def test_idempotency_key_returns_first_positions_and_writes_nothing(conn: psycopg.Connection[Any]) -> None:
    first = events.append(conn, "s-a", [Noted(text="x")], expected_version=None, idempotency_key="cli-1")
    again = events.append(conn, "s-a", [Noted(text="x")], expected_version=None, idempotency_key="cli-1")
    assert again == first
    assert events.event_count(conn) == 1


@pytest.mark.parametrize(
    "statement",
    ["UPDATE events SET type = 'X'", "DELETE FROM events", "TRUNCATE events"],
)
def test_log_refuses_update_delete_and_truncate(conn: psycopg.Connection[Any], statement: str) -> None:
    events.append(conn, "s-a", [Noted(text="x")], expected_version=0)
    with pytest.raises(psycopg.Error, match="append-only"):
        conn.execute(statement)
    assert events.event_count(conn) == 1


def test_immutable_log_error_is_translated_by_the_store(conn: psycopg.Connection[Any]) -> None:
    from events.store import _translate

    events.append(conn, "s-a", [Noted(text="x")], expected_version=0)
    try:
        conn.execute("DELETE FROM events")
    except psycopg.Error as exc:
        assert isinstance(_translate(exc), ImmutableLogError)


def test_changed_byte_breaks_the_hash_chain_at_that_position(conn: psycopg.Connection[Any]) -> None:
    positions = events.append(conn, "s-a", [Noted(text=f"e{i}") for i in range(5)], expected_version=0)
    with conn.transaction():
        assert events.verify.verify_chain(conn).broken_at is None
    with conn.transaction():
        conn.execute("ALTER TABLE events DISABLE TRIGGER events_are_immutable")
        conn.execute(
            "UPDATE events SET data = jsonb_set(data::jsonb, '{text}', '\"E2\"')::json WHERE position = %s",
            (positions[2],),
        )
        conn.execute("ALTER TABLE events ENABLE TRIGGER events_are_immutable")
    with conn.transaction():
        assert events.verify.verify_chain(conn).broken_at == positions[2]


def test_unknown_fields_and_types_from_newer_writers_are_tolerated(conn: psycopg.Connection[Any]) -> None:
    events.append(conn, "s-a", [Noted(text="x")], expected_version=0)
    with conn.transaction():
        conn.execute(
            "SELECT * FROM labctl_append(ARRAY['s-a','s-a'], ARRAY[NULL,NULL]::int[], ARRAY['Noted','FromTheFuture'],"
            ' ARRAY[\'{"type":"Noted","text":"y","added_later":1}\', \'{"type":"FromTheFuture"}\']::json[],'
            " '{}', NULL)"
        )
    stored = events.read_stream(conn, "s-a")
    assert stored[1].data == Noted(text="y")
    assert isinstance(stored[2].data, UnknownEvent) and stored[2].data.type == "FromTheFuture"


def test_every_append_notifies_with_the_last_position(db_url: str, conn: psycopg.Connection[Any]) -> None:
    with connect(db_url) as listener:
        listener.execute("LISTEN labctl_events")
        positions = events.append(conn, "s-a", [Noted(text="a"), Noted(text="b")], expected_version=0)
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert got == [str(positions[-1])]


def _writer(url: str, worker: int, count: int) -> None:
    with connect(url) as c:
        for i in range(count):
            # Mix single appends and small batches over several streams.
            batch = [NewEvent(f"w{worker}-{i % 3}", Noted(text="x", n=i))] * (1 + i % 3)
            events.append_batch(c, batch)


def test_follower_sees_every_position_exactly_once_in_order_under_concurrent_writers(db_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_writer, args=(db_url, w, 150)) for w in range(4)]
    seen: list[int] = []
    stop = threading.Event()

    def consume() -> None:
        for page in follow(db_url, 0, batch=50, poll_interval=0.05, stop=stop):
            seen.extend(e.position for e in page)

    reader = threading.Thread(target=consume)
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
        assert w.exitcode == 0
    with connect(db_url) as c:
        all_positions = [r[0] for r in c.execute("SELECT position FROM events ORDER BY position")]
    deadline = time.monotonic() + 30
    while len(seen) < len(all_positions) and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    reader.join(timeout=10)
    assert len(all_positions) == 4 * sum(1 + i % 3 for i in range(150))
    assert seen == all_positions


def test_follower_catches_up_after_its_connection_is_killed(db_url: str, conn: psycopg.Connection[Any]) -> None:
    stop = threading.Event()
    seen: list[int] = []

    def consume() -> None:
        for page in follow(db_url, 0, poll_interval=0.05, stop=stop, reconnect_delay=0.05):
            seen.extend(e.position for e in page)

    reader = threading.Thread(target=consume)
    reader.start()
    first = events.append(conn, "s-a", [Noted(text="1")], expected_version=None)
    _wait(lambda: seen == first)
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    later = events.append(conn, "s-a", [Noted(text="2"), Noted(text="3")], expected_version=None)
    _wait(lambda: seen == first + later)
    stop.set()
    reader.join(timeout=10)
    assert seen == first + later


def test_database_run_retries_the_transaction_after_losing_the_connection(db_url: str) -> None:
    db = Database(db_url)
    calls = 0

    def work(c: psycopg.Connection[Any]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            with connect(db_url) as killer:
                killer.execute("SELECT pg_terminate_backend(%s)", (c.info.backend_pid,))
        return events.append(c, "s-a", [Noted(text="x")], expected_version=None, idempotency_key="once")

    positions = db.run(work)
    assert calls == 2 and len(positions) == 1
    assert events.event_count(db.conn) == 1
    db.close()


def test_events_decode_into_their_structs(conn: psycopg.Connection[Any]) -> None:
    events.append(conn, "run-x", [RunFinished(run_id="x", state="failed", exit_code=3)], expected_version=0)
    (stored,) = events.read_all(conn)
    assert stored.data == RunFinished(run_id="x", state="failed", exit_code=3)
    assert msgspec.json.decode(events.codec.encode(stored.data))["type"] == "RunFinished"


def _wait(cond: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.02)


def test_expected_version_is_checked_for_an_event_later_in_a_batch(conn: psycopg.Connection[Any]) -> None:
    events.append(conn, "run-x", [Noted(text="a")], expected_version=0)
    stale = [NewEvent("run-x", Noted(text="b")), NewEvent("run-x", Noted(text="c"), expected_version=1)]
    with pytest.raises(ConcurrencyError) as info:
        events.append_batch(conn, stale)
    assert (info.value.expected, info.value.actual) == (1, 2)
    ok = [NewEvent("run-x", Noted(text="b")), NewEvent("run-x", Noted(text="c"), expected_version=2)]
    assert len(events.append_batch(conn, ok)) == 2


@pytest.mark.parametrize("repeat", [False, True], ids=["each-stream-once", "a-stream-twice"])
def test_a_batch_across_streams_gets_each_streams_next_versions_and_checks_each(
    conn: psycopg.Connection[Any], repeat: bool
) -> None:
    # Each stream once and a stream twice take different paths through labctl_append.
    events.append(conn, "s-a", [Noted(text="a1")], expected_version=0)
    events.append(conn, "s-b", [Noted(text="b1"), Noted(text="b2")], expected_version=0)
    batch = [
        NewEvent("s-a", Noted(text="a2"), 1),
        NewEvent("s-b", Noted(text="b3")),
        NewEvent("s-c", Noted(text="c1"), 0),
    ]
    batch += [NewEvent("s-b", Noted(text="b4"))] if repeat else []
    stored = events.append_batch(conn, batch)
    expected = [("s-a", 2), ("s-b", 3), ("s-c", 1)] + ([("s-b", 4)] if repeat else [])
    assert [(e.stream, e.version) for e in stored] == expected
    assert [(e.stream, e.version) for e in events.read_all(conn, after=3)] == expected
    assert [e.position for e in stored] == [4, 5, 6, 7][: len(batch)]

    stale = [NewEvent("s-c", Noted(text="c2"), 1), NewEvent("s-a", Noted(text="late"), 1)]
    stale += [NewEvent("s-c", Noted(text="c3"))] if repeat else []
    with pytest.raises(ConcurrencyError) as info:
        events.append_batch(conn, stale)
    assert (info.value.stream, info.value.expected, info.value.actual) == ("s-a", 1, 2)
    assert events.event_count(conn) == 3 + len(batch)
    with conn.transaction():
        assert events.verify.verify_chain(conn).problem is None


def test_a_connection_in_another_encoding_appends_text_that_reads_back_the_same(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    with connect(db_url) as latin:
        latin.execute("SET client_encoding = 'LATIN1'")
        events.append(latin, "s-é", [Noted(text="café ü")], expected_version=0)
    (stored,) = events.read_stream(conn, "s-é")
    assert stored.data == Noted(text="café ü")
    with conn.transaction():
        assert events.verify.verify_chain(conn).problem is None


@pytest.mark.parametrize("charset", ["UTF8", "LATIN1"])
def test_a_batch_encoded_ahead_is_stored_as_the_same_batch_encoded_at_append(
    db_url: str, conn: psycopg.Connection[Any], charset: str
) -> None:
    """An import encodes its batches in its planning thread; what is stored and hashed must not change."""
    batch = [NewEvent("s-é", Noted(text="café ü", n=i), i) for i in range(3)]
    with connect(db_url) as other:
        other.execute(f"SET client_encoding = '{charset}'")
        events.append_batch(other, batch)
        events.append_batch(other, events.EncodedBatch(NewEvent("s-ü", n.event, n.expected_version) for n in batch))
    plain, ahead = events.read_stream(conn, "s-é"), events.read_stream(conn, "s-ü")
    assert [(e.version, e.data) for e in ahead] == [(e.version, e.data) for e in plain]
    rows = conn.execute("SELECT stream, data::text FROM events ORDER BY position").fetchall()
    assert [d for s, d in rows if s == "s-ü"] == [d for s, d in rows if s == "s-é"]
    with conn.transaction():
        assert events.verify.verify_chain(conn).problem is None


def test_a_nul_escape_in_data_is_refused_and_a_backslash_before_u0000_is_kept(conn: psycopg.Connection[Any]) -> None:
    call = "SELECT * FROM labctl_append(ARRAY['s-a'], ARRAY[0], ARRAY['Noted'], ARRAY[%s]::json[], '{}', NULL)"
    for nul in ('{"type":"Noted","text":"a\\u0000b"}', '{"type":"Noted","text":"a\\\\\\u0000b"}'):
        with pytest.raises(psycopg.errors.UntranslatableCharacter), conn.transaction():
            conn.execute(call, (nul,))
    with pytest.raises(psycopg.errors.UntranslatableCharacter):
        events.append(conn, "s-a", [Noted(text="a\x00b")], expected_version=0)
    assert events.event_count(conn) == 0
    conn.execute(call, ('{"type":"Noted","text":"a\\\\u0000b"}',))  # an escaped backslash, then "u0000"
    (stored,) = events.read_stream(conn, "s-a")
    assert stored.data == Noted(text="a\\u0000b")
