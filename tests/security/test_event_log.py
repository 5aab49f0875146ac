"""The event log against its own users: who is acting, and tamper evidence even against labctl's role."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import events
from events import ActorRefused, ConcurrencyError, EventMeta
from events.codec import Event
from events.verify import JOINED, LENGTH_PREFIXED, payload, verify_chain
from labctl.db import as_role, connect, ensure_schema
from projections.engine import replay_live
from tests.conftest import _with_dbname, run_cli

V1 = Path(__file__).resolve().parent.parent / "data" / "schema_v1.sql"


class Remarked(Event, frozen=True, kw_only=True):
    text: str


def _note(conn: psycopg.Connection[Any], stream: str, *texts: str, actor: str = "") -> list[int]:
    return events.append(
        conn, stream, [Remarked(text=t) for t in texts], expected_version=None, meta=EventMeta(actor=actor)
    )


def _chain(conn: psycopg.Connection[Any]) -> Any:
    with conn.transaction():
        return verify_chain(conn)


def _superuser_edit(conn: psycopg.Connection[Any], statement: str, params: tuple[Any, ...] = ()) -> None:
    """What only the database owner can do: change the log behind the trigger's back."""
    with conn.transaction():
        conn.execute("ALTER TABLE events DISABLE TRIGGER events_are_immutable")
        conn.execute(statement, params)
        conn.execute("ALTER TABLE events ENABLE TRIGGER events_are_immutable")


# ------------------------------------------------------------ labctl's own role


@pytest.mark.parametrize(
    "attack",
    [
        "UPDATE events SET data = '{}'",
        "DELETE FROM events",
        "TRUNCATE events",
        "ALTER TABLE events DISABLE TRIGGER events_are_immutable",
        "INSERT INTO events SELECT position + 9, stream, version + 9, type, data, meta, recorded_at, hash FROM events",
        "CREATE OR REPLACE FUNCTION labctl.labctl_append(text[], integer[], text[], json[], jsonb, text) "
        "RETURNS TABLE (out_first_position bigint, out_versions integer[], out_recorded_at timestamptz, "
        "out_replayed_positions bigint[]) "
        "LANGUAGE sql AS 'SELECT NULL::bigint, NULL::integer[], NULL::timestamptz, NULL::bigint[]'",
        "DROP TRIGGER events_are_immutable ON events",
        "DELETE FROM audit_checkpoints",
        "INSERT INTO event_hash_encodings VALUES (1, 999)",
    ],
)
def test_labctls_own_role_appends_but_cannot_rewrite_the_log(
    conn: psycopg.Connection[Any], role_url: Callable[[str], str], attack: str
) -> None:
    with connect(role_url("labctl_app")) as app:
        _note(app, "s-a", "one", "two")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(attack)
        _note(app, "s-a", "three")
    assert [e.data for e in events.read_stream(conn, "s-a")] == [Remarked(text=t) for t in ("one", "two", "three")]
    assert _chain(conn).problem is None


def test_labctls_own_role_can_rebuild_the_read_models_and_another_member_after_it(
    conn: psycopg.Connection[Any], role_url: Callable[[str], str]
) -> None:
    _note(conn, "s-a", "x")
    for _ in range(2):
        with connect(role_url("labctl_user")) as person:
            assert replay_live(person).position == 1
    owner = conn.execute("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'live'").fetchone()
    assert owner == ("labctl_app",)


def test_a_log_or_append_function_shadowed_in_the_read_model_schema_is_never_used(
    conn: psycopg.Connection[Any], role_url: Callable[[str], str]
) -> None:
    _note(conn, "s-a", "real")
    with connect(role_url("labctl_app")) as app:
        app.execute("CREATE TABLE live.events (LIKE labctl.events)")
        app.execute(
            "CREATE FUNCTION live.labctl_append(text[], integer[], text[], json[], jsonb, text) RETURNS TABLE "
            "(out_first_position bigint, out_versions integer[], out_recorded_at timestamptz, "
            "out_replayed_positions bigint[]) "
            "LANGUAGE sql AS 'SELECT 99::bigint, ARRAY[1], now(), NULL::bigint[]'"
        )
        assert _note(app, "s-a", "also real") == [2]
        assert [e.data for e in events.read_all(app)] == [Remarked(text="real"), Remarked(text="also real")]
        assert _chain(app).checked == 2


# ------------------------------------------------------------------ who is acting


def test_a_personal_role_is_recorded_as_the_actor_whatever_the_client_leaves_out(
    conn: psycopg.Connection[Any], role_url: Callable[[str], str]
) -> None:
    url = role_url("labctl_user")
    with connect(url) as person:
        name = person.info.user
        _note(person, "s-a", "mine", actor="")
        _note(person, "s-a", "also mine", actor=name)
    assert [e.meta.actor for e in events.read_stream(conn, "s-a")] == [name, name]
    assert _chain(conn).problem is None  # the actor the function wrote is what was hashed


def test_a_personal_role_claiming_another_user_is_refused_and_nothing_is_appended(
    conn: psycopg.Connection[Any], role_url: Callable[[str], str]
) -> None:
    with connect(role_url("labctl_user")) as person, pytest.raises(ActorRefused) as info:
        _note(person, "s-a", "forged", actor="alice")
    assert "refusing to record events as alice" in str(info.value)
    assert events.event_count(conn) == 0


def test_a_service_account_may_act_for_others(conn: psycopg.Connection[Any], role_url: Callable[[str], str]) -> None:
    with connect(role_url("labctl_service")) as service:
        _note(service, "s-a", "on behalf", actor="alice")
    assert events.read_stream(conn, "s-a")[0].meta.actor == "alice"


def test_cli_with_a_personal_role_and_another_labctl_user_fails_in_one_line(
    conn: psycopg.Connection[Any], role_url: Callable[[str], str], labctl_env: dict[str, str], tmp_path: Path
) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\ncommand = "true"\n')
    url = role_url("labctl_user")
    proc = run_cli({**labctl_env, "LABCTL_DATABASE_URL": url, "LABCTL_USER": "alice"}, "run", str(recipe))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to record events as alice" in lines[0], proc.stderr
    assert events.event_count(conn) == 0


def test_the_single_user_embedded_role_keeps_the_clients_user(
    conn: psycopg.Connection[Any], role_url: Callable[[str], str]
) -> None:
    with connect(role_url("labctl_app")) as app:
        _note(app, "s-a", "x", actor="alice")
    assert events.read_stream(conn, "s-a")[0].meta.actor == "alice"


# ---------------------------------------------------------------- the hash itself


def test_length_prefixed_encoding_tells_apart_what_the_joined_one_confuses() -> None:
    a = ("s-a\x1f1", "T", b"{}", b"{}")
    b = ("s-a", "1\x1fT", b"{}", b"{}")
    joined = [payload(JOINED, 5, s, 1, t, d, m, 0) for s, t, d, m in (a, b)]
    prefixed = [payload(LENGTH_PREFIXED, 5, s, 1, t, d, m, 0) for s, t, d, m in (a, b)]
    assert joined[0] == joined[1]  # two different events, one hash: the old encoding's flaw
    assert prefixed[0] != prefixed[1]


def test_moving_a_separator_between_fields_changes_the_hash(conn: psycopg.Connection[Any]) -> None:
    _note(conn, "s-a", "a\x1fb", "ü ✓")
    assert _chain(conn).problem is None  # Python and the append function agree byte for byte
    # Data text ends and meta begins: moving the boundary would keep a joined hash but not this one.
    _superuser_edit(conn, """UPDATE events SET meta = '{"actor": "x"}' WHERE position = 1""")
    assert _chain(conn).broken_at == 1


def test_a_chain_recomputed_with_the_databases_own_functions_is_caught_by_the_checkpoint_and_the_anchor(
    conn: psycopg.Connection[Any], labctl_env: dict[str, str]
) -> None:
    _note(conn, "s-a", *[f"e{i}" for i in range(5)])
    anchor = run_cli(labctl_env, "audit", "head", check=True).stdout.strip()
    assert anchor.startswith("5:") and len(anchor) == 2 + 64
    run_cli(labctl_env, "audit", "verify", check=True)
    # The owner rewrites event 2 and re-chains everything after it, as an attacker would.
    with conn.transaction():
        conn.execute("ALTER TABLE events DISABLE TRIGGER events_are_immutable")
        conn.execute("""UPDATE events SET data = '{"type": "Remarked", "text": "forged"}' WHERE position = 2""")
        prev = conn.execute("SELECT hash FROM events WHERE position = 1").fetchone()[0]  # type: ignore[index]
        for position in range(2, 6):
            prev = conn.execute(
                "UPDATE events SET hash = sha256(%s || labctl_event_payload(position, stream, version, type, "
                "data::text, meta::text, recorded_at)) WHERE position = %s RETURNING hash",
                (prev, position),
            ).fetchone()[0]  # type: ignore[index]
        conn.execute("ALTER TABLE events ENABLE TRIGGER events_are_immutable")
    assert _chain(conn).problem is None  # a consistent chain in itself...
    incremental = run_cli(labctl_env, "audit", "verify")
    assert incremental.returncode == 1
    assert "the event at position 5 changed since it was verified" in incremental.stdout
    anchored = run_cli(labctl_env, "audit", "verify", "--expect", anchor)
    assert anchored.returncode == 1 and "the hash at position 5 differs" in anchored.stdout
    assert "Traceback" not in anchored.stderr


def test_a_malformed_anchor_is_one_line_and_exit_2(labctl_env: dict[str, str]) -> None:
    proc = run_cli(labctl_env, "audit", "verify", "--expect", "12:nothex")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "labctl: error: --expect '12:nothex': expected POSITION:HASH as printed by `labctl audit head`"
    ]


# ------------------------------------------------------------ holes and truncation


def test_positions_stay_contiguous_when_appends_conflict_or_roll_back(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    def race(i: int) -> None:
        with connect(db_url) as c, contextlib.suppress(ConcurrencyError):
            events.append(c, "cache-k", [Remarked(text=str(i))], expected_version=0)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with pytest.raises(RuntimeError), conn.transaction():
        _note(conn, "s-b", "rolled back")
        raise RuntimeError
    _note(conn, "s-b", "kept")
    positions = [r[0] for r in conn.execute("SELECT position FROM events ORDER BY position")]
    assert positions == [1, 2]
    assert _chain(conn).problem is None


def test_a_deleted_event_is_a_visible_hole(conn: psycopg.Connection[Any], labctl_env: dict[str, str]) -> None:
    _note(conn, "s-a", "a", "b", "c", "d")
    _superuser_edit(conn, "DELETE FROM events WHERE position = 2")
    # Re-chain the rest so that only the hole gives it away.
    with conn.transaction():
        conn.execute("ALTER TABLE events DISABLE TRIGGER events_are_immutable")
        prev = conn.execute("SELECT hash FROM events WHERE position = 1").fetchone()[0]  # type: ignore[index]
        for position in (3, 4):
            prev = conn.execute(
                "UPDATE events SET hash = sha256(%s || labctl_event_payload(position, stream, version, type, "
                "data::text, meta::text, recorded_at)) WHERE position = %s RETURNING hash",
                (prev, position),
            ).fetchone()[0]  # type: ignore[index]
        conn.execute("ALTER TABLE events ENABLE TRIGGER events_are_immutable")
    proc = run_cli(labctl_env, "audit", "verify", "--full")
    assert proc.returncode == 1
    assert "position 2 is missing (the next event is at 3): events were deleted" in proc.stdout


def test_tail_truncation_is_detected_even_after_replay(
    conn: psycopg.Connection[Any], labctl_env: dict[str, str]
) -> None:
    _note(conn, "s-a", *[f"e{i}" for i in range(6)])
    anchor = run_cli(labctl_env, "audit", "head", check=True).stdout.strip()
    run_cli(labctl_env, "audit", "verify", check=True)
    _superuser_edit(conn, "DELETE FROM events WHERE position > 4")
    run_cli(labctl_env, "replay", check=True)
    proc = run_cli(labctl_env, "audit", "verify", "--full")
    assert proc.returncode == 1
    assert "the log ends at position 4 but was verified up to 6 before" in proc.stdout
    anchored = run_cli(labctl_env, "audit", "verify", "--expect", anchor)
    assert anchored.returncode == 1 and "before the expected 6" in anchored.stdout


def test_incremental_verify_checks_only_what_came_after_its_checkpoint_and_catches_it(
    conn: psycopg.Connection[Any], labctl_env: dict[str, str]
) -> None:
    _note(conn, "s-a", "a", "b")
    assert "ok: 2 events chained up to position 2" in run_cli(labctl_env, "audit", "verify", check=True).stdout
    _note(conn, "s-a", "c", "d", "e")
    out = run_cli(labctl_env, "audit", "verify", check=True).stdout
    assert "ok: 3 events after position 2 chained up to position 5" in out
    _note(conn, "s-a", "f")
    _superuser_edit(conn, """UPDATE events SET data = '{"type": "Remarked", "text": "F"}' WHERE position = 6""")
    bad = run_cli(labctl_env, "audit", "verify")
    assert bad.returncode == 1 and "hash chain broken at position 6" in bad.stdout
    assert run_cli(labctl_env, "audit", "verify", "--full").returncode == 1


# ------------------------------------------------------------ logs from before


def _old_append(conn: psycopg.Connection[Any], text: str) -> None:
    """Append through a version-1 database's own function (its result shape differs from today's)."""
    data = f'{{"type": "Remarked", "text": {json.dumps(text)}}}'
    conn.execute(
        "SELECT * FROM public.labctl_append(ARRAY['s-a'], ARRAY[NULL]::int[], ARRAY['Remarked'], ARRAY[%s], "
        "ARRAY['{}'], NULL)",
        (data,),
    ).fetchall()


def test_a_log_hashed_the_old_way_still_verifies_after_the_upgrade(server_url: str) -> None:
    name = f"labctl_s_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        with connect(_with_dbname(server_url, name)) as old:
            with old.transaction():
                old.execute("SET LOCAL search_path = public")
                old.execute(V1.read_text().encode())
            old.execute("SET search_path = public")  # where a version-1 database keeps everything
            _old_append(old, "old \x1f one")
            _old_append(old, "old two")
            with pytest.raises(RuntimeError), old.transaction():  # burns a sequence number: a hole in v1
                _old_append(old, "rolled back")
                raise RuntimeError
            _old_append(old, "old three")
            ensure_schema(old)
            old.execute("SET search_path = live, labctl")
            _note(old, "s-a", "new four")
            encodings = old.execute("SELECT encoding, from_position FROM event_hash_encodings ORDER BY 1").fetchall()
            last_old = old.execute("SELECT max(position) FROM events WHERE data->>'text' LIKE 'old%'").fetchone()
            assert encodings == [(1, 1), (2, last_old[0] + 1)]  # type: ignore[index]
            report = _chain(old)
            assert report.problem is None and report.checked == 4
            _superuser_edit(
                old, """UPDATE events SET data = '{"type": "Remarked", "text": "old two!"}' WHERE position = 2"""
            )
            assert _chain(old).broken_at == 2
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_python_hash_matches_sha256_of_the_documented_bytes() -> None:
    body = payload(LENGTH_PREFIXED, 1, "s", 1, "T", b"{}", b"{}", 1)
    assert body == (
        (1).to_bytes(8, "big")
        + (1).to_bytes(4, "big")
        + (1).to_bytes(8, "big")
        + b"\x00\x00\x00\x01s"
        + b"\x00\x00\x00\x01T"
        + b"\x00\x00\x00\x02{}"
        + b"\x00\x00\x00\x02{}"
    )
    assert hashlib.sha256(body).digest() != hashlib.sha256(payload(JOINED, 1, "s", 1, "T", b"{}", b"{}", 1)).digest()


# ------------------------------------------------------------------- reading


def test_status_as_of_leaves_no_schema_behind(conn: psycopg.Connection[Any], labctl_env: dict[str, str]) -> None:
    _note(conn, "s-a", "a", "b")
    for _ in range(2):
        run_cli(labctl_env, "status", "--as-of", "1", "--all", check=True)
    left = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'asof%'").fetchall()
    assert left == []


def test_admin_add_user_gives_a_user_their_own_database_role(
    conn: psycopg.Connection[Any], labctl_env: dict[str, str]
) -> None:
    name = f"sec_added_{uuid.uuid4().hex[:6]}"
    try:
        out = run_cli(labctl_env, "admin", "add-user", name, check=True).stdout
        assert f"postgres role {name}: created, member of labctl_user" in out
        again = run_cli(labctl_env, "admin", "add-user", name, check=True).stdout
        assert f"postgres role {name}: already there" in again
        with connect(as_role(labctl_env["LABCTL_DATABASE_URL"], name)) as person:
            _note(person, "s-a", "mine")
            with pytest.raises(ActorRefused):
                _note(person, "s-a", "not mine", actor="alice")
        assert [e.meta.actor for e in events.read_stream(conn, "s-a")] == [name]
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
