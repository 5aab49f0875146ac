"""Applying events to projections: inline, catching up, rebuilding, diffing."""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import msgspec
import psycopg
from psycopg import pq, sql

from events import (
    EventMeta,
    NewEvent,
    StoredEvent,
    UnknownEvent,
    append_batch,
    decode_rows,
    last_position,
    read_all,
)
from events.codec import decode_event, event_types
from projections.ahead import ahead
from projections.base import DbRows, KeysRead, MemoryRows, Rows, ServerBuiltRows, State, Table
from projections.registry import PROJECTIONS

LIVE = "live"
CHECKPOINTS = "projection_checkpoints"
APPEND_LOCK = 7146011  # the advisory lock labctl_append takes
# Held by whoever builds a staging schema to swap in: rebuilds take turns. (7146012 is db.py's schema
# lock and 7146013 the importer's.)
REBUILD_LOCK = 7146014
STAGING_PREFIX = "live_rebuild_"
READ_MODEL_OWNER = "labctl_app"  # owns the projection schemas, so any member may rebuild them


def _handlers() -> dict[str, list[Any]]:
    by_type: dict[str, list[Any]] = {}
    for p in PROJECTIONS:
        for type_name, fn in p.handlers.items():
            by_type.setdefault(type_name, []).append(fn)
    return by_type


_BY_TYPE = _handlers()


def _decodes(state: State, e: StoredEvent) -> None:
    """Stands in, in a rebuild, for the handlers of projections the server computes: of the event,
    only whether it decodes matters there (what does not is skipped, by the server's query too)."""
    assert not isinstance(e.data, UnknownEvent)


def _rebuild_handlers() -> dict[str, list[Any]]:
    """The handlers a rebuild runs: those of projections with a table folded in memory. A projection
    whose every table the server computes (``Table.rebuild_query``) is not folded at all."""
    by_type: dict[str, list[Any]] = {}
    checked: set[str] = set()
    for p in PROJECTIONS:
        if all(t.rebuild_query is not None for t in p.tables):
            checked.update(p.handlers)
            continue
        for type_name, fn in p.handlers.items():
            by_type.setdefault(type_name, []).append(fn)
    for type_name in checked - by_type.keys():  # (a folded handler finds an undecodable event itself)
        by_type[type_name] = [_decodes]
    return by_type


_REBUILD_BY_TYPE = _rebuild_handlers()


def all_tables() -> list[Table[Any]]:
    return [t for p in PROJECTIONS for t in p.tables]


def apply(state: State, events: Iterable[StoredEvent], by_type: dict[str, list[Any]] = _BY_TYPE) -> int:
    """Run every projection's handlers (``by_type``: a rebuild's) over ``events``; return how many were applied."""
    n = 0
    for e in events:
        for fn in by_type.get(e.type, ()):
            try:
                fn(state, e)
            except (AttributeError, AssertionError):
                # An event that no longer decodes as its type (see decode_event) has nothing to fold;
                # checked only on failure, so the common path pays nothing for it.
                if isinstance(e.data, UnknownEvent):
                    state.undecodable.append(e.position)
                    break
                raise
        n += 1
    return n


def _db_state(conn: psycopg.Connection[Any], schema: str) -> State:
    return State(lambda table: DbRows(conn, schema, table))


def _prefetch(state: State, events: Sequence[StoredEvent]) -> None:
    """Read, one query per table, the rows a batch's handlers will ask for first (a dry run of the
    handlers names them), instead of one round trip per row as each handler asks."""
    if len(events) < 2:
        return
    wanted: dict[str, tuple[Table[Any], set[Any]]] = {}

    def keys_of(table: Table[Any]) -> KeysRead[Any]:
        return KeysRead(wanted.setdefault(table.name, (table, set()))[1])

    dry = State(keys_of)
    for e in events:
        for fn in _BY_TYPE.get(e.type, ()):
            with contextlib.suppress(Exception):  # handlers meeting no rows may assert; the real run decides
                fn(dry, e)
    for table, keys in wanted.values():
        if len(keys) > 1:
            rows = state.rows(table)
            assert isinstance(rows, DbRows)
            rows.prefetch(keys)


def _flush(state: State) -> None:
    for rows in state.all_rows().values():
        assert isinstance(rows, DbRows)
        rows.flush()


# Composed once per schema, not on every append (as text, psycopg also caches its conversion). Bounded: every
# rebuild writes the checkpoints of a staging schema of its own name, and a process may rebuild many times.
@functools.lru_cache(maxsize=64)
def _read_checkpoints(schema: str) -> bytes:
    return sql.SQL("SELECT name, position FROM {}").format(sql.Identifier(schema, CHECKPOINTS)).as_bytes()


@functools.lru_cache(maxsize=64)
def _write_checkpoints(schema: str) -> bytes:
    return (
        sql.SQL(
            "INSERT INTO {} (name, position) SELECT unnest(%s::text[]), %s::bigint "
            "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position"
        )
        .format(sql.Identifier(schema, CHECKPOINTS))
        .as_bytes()
    )


def checkpoint(conn: psycopg.Connection[Any], schema: str = LIVE) -> int:
    """The position every projection in ``schema`` has applied (the smallest)."""
    found = dict(conn.execute(_read_checkpoints(schema)).fetchall())
    return min((int(found.get(p.name, 0)) for p in PROJECTIONS), default=0)


def checkpoints(conn: psycopg.Connection[Any], schema: str = LIVE) -> dict[str, int]:
    found = dict(conn.execute(_read_checkpoints(schema)).fetchall())
    return {p.name: int(found.get(p.name, 0)) for p in PROJECTIONS}


def _set_checkpoints(conn: psycopg.Connection[Any], schema: str, position: int) -> None:
    """Every projection's checkpoint at ``position``, in one statement (one row per projection)."""
    conn.execute(_write_checkpoints(schema), ([p.name for p in PROJECTIONS], position))


def apply_inline(conn: psycopg.Connection[Any], events: Sequence[StoredEvent], schema: str = LIVE) -> None:
    """Apply just-appended events in the same transaction (the append lock is held).

    Events appended earlier without projecting (if any) are applied first, so
    the projection never skips one.
    """
    if not events:
        return
    done = checkpoint(conn, schema)
    if events[-1].position <= done:
        return  # an idempotent re-send: these were applied when first appended
    state = _db_state(conn, schema)
    if events[0].position - 1 > done:
        for page in _pages(conn, done, events[0].position - 1):
            apply(state, page)
    pending = [e for e in events if e.position > done]
    _prefetch(state, pending)
    apply(state, pending)
    # Every table's writes and the checkpoints in one round trip (pipeline mode) when none needs a COPY.
    rows = state.all_rows().values()
    together = not any(isinstance(r, DbRows) and r.copies for r in rows)
    with conn.pipeline() if together else contextlib.nullcontext():
        _flush(state)
        _set_checkpoints(conn, schema, events[-1].position)


def record(
    conn: psycopg.Connection[Any],
    batch: Sequence[NewEvent],
    *,
    idempotency_key: str | None = None,
    meta: EventMeta | None = None,
    savepoint: bool = True,
) -> list[StoredEvent]:
    """Append events and apply them to the projections, atomically.

    ``savepoint=False``: inside a transaction already, the caller's (or its savepoint) makes this atomic,
    for it lets a failure here end it (``Database.run`` does): no savepoint of its own, two round trips less.
    """
    own = savepoint or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction() if own else contextlib.nullcontext():
        stored = append_batch(conn, batch, idempotency_key=idempotency_key, meta=meta)
        apply_inline(conn, stored)
    return stored


def _pages(conn: psycopg.Connection[Any], after: int, until: int, size: int = 5000) -> Iterator[list[StoredEvent]]:
    while after < until:
        page = read_all(conn, after, size, until=until)
        if not page:
            return
        yield page
        after = page[-1].position


# Projecting inline costs several times what a rebuild costs per event (a row fetched and upserted per
# key, against one in-memory fold and one COPY per table), so from this many pending events, and when they
# are a good part of the whole log, rebuilding everything is the faster way to bring the read models up.
REBUILD_FROM = 10_000


def rebuild_pays(pending: int, log_size: int) -> bool:
    """Whether rebuilding every read model beats projecting ``pending`` events of a ``log_size`` log."""
    return pending >= REBUILD_FROM and pending * 4 >= log_size


def bring_up_to_date(conn: psycopg.Connection[Any]) -> bool:
    """Apply what was appended without projecting: inline, or by a rebuild when that is faster
    (then True)."""
    end = last_position(conn)
    pending = end - checkpoint(conn)
    if pending > 0 and rebuild_pays(pending, end):
        replay_live(conn)
        return True
    catch_up(conn)
    return False


def catch_up(conn: psycopg.Connection[Any], schema: str = LIVE) -> int:
    """Apply events appended without projecting (e.g. by a bare ``append``)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
        done = checkpoint(conn, schema)
        end = last_position(conn)
        if end <= done:
            return 0
        state = _db_state(conn, schema)
        n = sum(apply(state, page) for page in _pages(conn, done, end))
        _flush(state)
        _set_checkpoints(conn, schema, end)
        return n


# ------------------------------------------------------------------ rebuild


class FoldResult(msgspec.Struct):
    state: State
    position: int
    events: int
    seconds: float


_SCAN = (
    "SELECT position, stream, version, type, data::text, meta::text, recorded_at "
    "FROM labctl.events WHERE position <= %s ORDER BY position"
)


Progress = Callable[[int], None]
# Told ``(tables done, tables in all)`` as a rebuild or an audit finishes each read-model table: the
# server's part of a rebuild, after its scan of the log, is minutes at 10M events.
TablesProgress = Callable[[int, int], None]


_PAGE = 20000


def _pages_of(conn: psycopg.Connection[Any], query: str, params: Sequence[Any]) -> Iterator[list[tuple[Any, ...]]]:
    """``query``'s rows in pages of 20,000 through a server-side cursor, the next page fetched in a
    thread while the caller works on this one (the server produces it meanwhile instead of waiting).
    Call inside a transaction; the connection is this generator's until it ends."""

    def pages() -> Iterator[list[tuple[Any, ...]]]:
        with conn.cursor(name="labctl_scan", binary=True) as cur:
            cur.execute(query, params)
            while rows := cur.fetchmany(_PAGE):
                yield rows

    # Closed explicitly: a scan stopped early releases the connection before this generator returns.
    with contextlib.closing(ahead(pages(), depth=2, name="labctl-scan")) as fetched:
        yield from fetched


def scan_events(conn: psycopg.Connection[Any], until: int, progress: Progress | None = None) -> Iterator[StoredEvent]:
    """Every event up to ``until`` (see ``_pages_of``); ``progress`` is told how many events were read
    after each page."""
    done = 0
    for rows in _pages_of(conn, _SCAN, (until,)):
        yield from decode_rows(rows)
        done += len(rows)
        if progress is not None:
            progress(done)


# Positions (after, last] of events known to decode (just appended, from events just encoded).
Decoded = tuple[int, int]


def fold(
    conn: psycopg.Connection[Any],
    until: int | None = None,
    progress: Progress | None = None,
    decoded: Decoded | None = None,
    checked: int = 0,
) -> FoldResult:
    """Rebuild every projection in memory from the log (up to ``until``); when the server computes
    every table, only look for the events that no longer decode (not among the ``decoded``, nor up to
    ``checked``: see ``checked_through``)."""
    started = time.perf_counter()
    with without_gc(), conn.transaction():
        end = last_position(conn) if until is None else until
        state = State(_rebuild_rows)
        if _CHECKS_ONLY:
            n = _find_undecodable(conn, end, state.undecodable, progress, decoded or (end, end), checked)
        else:
            n = apply(state, scan_events(conn, end, progress), _REBUILD_BY_TYPE)
    return FoldResult(state, end, n, time.perf_counter() - started)


# Whether the server computes every table, so that a rebuild's fold only finds the events that do not decode.
_CHECKS_ONLY = all(fns == [_decodes] for fns in _REBUILD_BY_TYPE.values())

# (the text only of the types a rebuild handles: the others' payloads are not even sent)
_DECODE_SCAN = (
    "SELECT position, type, CASE WHEN type = ANY(%s) THEN data::text END FROM labctl.events "
    "WHERE position > %s AND position <= %s AND (position <= %s OR position > %s) ORDER BY position"
)


def _find_undecodable(
    conn: psycopg.Connection[Any],
    until: int,
    undecodable: list[int],
    progress: Progress | None,
    decoded: Decoded,
    checked: int = 0,
) -> int:
    """What ``apply`` with only ``_decodes`` handlers does, without making a StoredEvent of each event:
    note the positions of the events up to ``until`` that no longer decode, skipping the ``decoded``
    and those up to ``checked``; return how many events there are (those skipped too)."""
    after, last = decoded
    checked = min(checked, until)
    done = checked + max(0, min(last, until) - max(after, checked))
    if progress is not None and done:
        progress(done)
    for rows in _pages_of(conn, _DECODE_SCAN, (list(_REBUILD_BY_TYPE), checked, until, after, last)):
        for pos, typ, data in rows:
            if data is not None and isinstance(decode_event(typ, data), UnknownEvent):
                undecodable.append(pos)
        done += len(rows)
        if progress is not None:
            progress(done)
    return done


# A rebuild leaves in its schema's checkpoints the position up to which every event was found to decode,
# named by this, the fingerprint of what decides whether an event decodes, and the hash of the event at
# that position (which the hash chain makes stand for every event before it: a log cut back and written
# again does not match).
_CHECKED = "decoded "


@functools.cache
def _decode_fingerprint() -> str:
    """What decides whether a payload decodes: every event type's definition, and msgspec's version."""
    types = [(name, msgspec.inspect.type_info(cls)) for name, cls in sorted(event_types().items())]
    return hashlib.sha256(f"{msgspec.__version__} {types!r}".encode()).hexdigest()[:16]


def checked_through(conn: psycopg.Connection[Any], schema: str = LIVE) -> int:
    """The position up to which the rebuild that made ``schema`` found that every event decodes, with
    the event types of this labctl (0 if it was built by another definition of them, or not rebuilt).

    A rebuild need not look at those events again: the log is append-only, and whether a payload
    decodes depends only on its bytes and the definitions fingerprinted. The full audit does not trust
    it: it decodes everything, and a rebuild that kept an event that does not decode differs from its."""
    query = sql.SQL(
        "SELECT c.position FROM {} AS c JOIN labctl.events AS e ON e.position = c.position "
        "WHERE c.name = %s || encode(e.hash, 'hex')"
    ).format(sql.Identifier(schema, CHECKPOINTS))
    row = conn.execute(query, (f"{_CHECKED}{_decode_fingerprint()} ",)).fetchone()
    return int(row[0]) if row else 0


def _set_checked_through(conn: psycopg.Connection[Any], schema: str, end: int, undecodable: Sequence[int]) -> None:
    """Record in ``schema`` that every event up to ``end`` decodes, but for the ``undecodable`` (found by a
    fold that checked all the others): up to the first of those."""
    query = sql.SQL(
        "INSERT INTO {} (name, position) SELECT %s || encode(hash, 'hex'), position FROM labctl.events "
        "WHERE position = %s"
    ).format(sql.Identifier(schema, CHECKPOINTS))
    conn.execute(query, (f"{_CHECKED}{_decode_fingerprint()} ", min(undecodable, default=end + 1) - 1))


def _rebuild_rows(table: Table[Any]) -> Rows[Any]:
    return MemoryRows(table) if table.rebuild_query is None else ServerBuiltRows(table)


def _rebuild_select(table: Table[Any]) -> sql.SQL:
    """``table``'s rows as the server computes them from the log (``Table.rebuild_query``)."""
    assert table.rebuild_query is not None
    return sql.SQL(table.rebuild_query)  # (not .format()ted: the query's text is taken as it is)


# A table the server computes sorts every row of it once to keep the last write of each key: in
# memory where that fits.
_SORT_MEMORY = "SET LOCAL work_mem = '256MB'"


@contextlib.contextmanager
def without_gc() -> Iterator[None]:
    """A fold builds many long-lived objects, and writing them out many short-lived ones: the cyclic
    collector would rescan the long-lived ones over and over. Nothing here makes cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _clone_tables(conn: psycopg.Connection[Any], target: str, *, indexes: bool) -> None:
    """Create empty copies of the live projection tables in ``target`` (same names)."""
    for name in [CHECKPOINTS, *(t.name for t in all_tables())]:
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
                sql.Identifier(target, name), sql.Identifier(LIVE, name)
            )
        )
    if indexes:
        _clone_indexes(conn, target)


def _clone_indexes(conn: psycopg.Connection[Any], target: str, tables: Sequence[str] | None = None) -> None:
    """Recreate the live schema's keys and indexes in ``target`` (of ``tables``, or all), with the same names."""
    for builds in _index_builds(conn, target, tables).values():
        for statements in builds:
            for statement in statements:
                conn.execute(statement)


Statement = sql.Composed | bytes


def _index_builds(
    conn: psycopg.Connection[Any], target: str, tables: Sequence[str] | None = None
) -> dict[str, list[list[Statement]]]:
    """How to recreate the live schema's keys and indexes in ``target`` (of ``tables``, or all), with the
    same names: by table, one list of statements per index, each list to run in one transaction. The
    lists of one table may run at once on different connections (CREATE INDEX locks out writes, not
    other index builds): a key's index is built like any other, then made the key. (A table's keys are
    one list: two transactions each making a key would wait for each other's lock on the table.)"""
    names = [CHECKPOINTS, *(t.name for t in all_tables())] if tables is None else list(tables)
    builds: dict[str, list[list[Statement]]] = {name: [] for name in names}
    key_builds: dict[str, list[Statement]] = {}
    keys = conn.execute(
        "SELECT t.relname, c.conname, pg_get_constraintdef(c.oid), c.contype, c.condeferrable, "
        "pg_get_indexdef(c.conindid), i.relname "
        "FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
        "JOIN pg_class t ON t.oid = c.conrelid JOIN pg_class i ON i.oid = c.conindid "
        "WHERE n.nspname = %s AND c.contype IN ('p', 'u') AND t.relname = ANY(%s) ORDER BY t.relname, c.conname",
        (LIVE, names),
    ).fetchall()
    for table, conname, definition, kind, deferrable, index, index_name in keys:
        add = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(
            sql.Identifier(target, table), sql.Identifier(conname)
        )
        if table not in key_builds:
            builds[table].append(key_builds.setdefault(table, []))
        if deferrable:  # (none is: built by the constraint itself, as its definition says)
            key_builds[table].append(add + sql.SQL(definition))
            continue
        using = sql.SQL("{} USING INDEX {}").format(
            sql.SQL("PRIMARY KEY" if kind == "p" else "UNIQUE"), sql.Identifier(index_name)
        )
        key_builds[table] += [_retarget(index, table, target), add + using]
    others = conn.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid), t.relname FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
        "JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE n.nspname = %s AND t.relname = ANY(%s) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)",
        (LIVE, names),
    ).fetchall()
    for _name, definition, table in others:
        builds[table].append([_retarget(definition, table, target)])
    return builds


def _retarget(definition: str, table: str, target: str) -> bytes:
    """A live index's definition (``pg_get_indexdef``) made to build the same index on ``target``'s table."""
    on_live = f" ON {LIVE}.{table} "
    if on_live not in definition:
        raise RuntimeError(f"cannot clone index definition: {definition}")
    return definition.replace(on_live, f" ON {target}.{table} ", 1).encode()


def _copy_rows(conn: psycopg.Connection[Any], schema: str, table: Table[Any], rows: Iterable[Any]) -> None:
    query = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(schema, table.name), sql.SQL(", ").join(map(sql.Identifier, table.columns))
    )
    with conn.cursor() as cur, cur.copy(query) as copy:
        for row in rows:
            copy.write_row(table.to_db(row))


def _rebuild_params(until: int, skip: list[int], part: int = 0, parts: int = 1) -> dict[str, Any]:
    """The parameters of a ``Table.rebuild_query``: part ``part`` of ``parts`` of its rows (see
    ``Table.rebuild_parts``) from the log up to ``until``, without the events at ``skip``."""
    return {"until": until, "skip": skip, "part": part, "parts": parts}


def _insert_server_built(
    conn: psycopg.Connection[Any],
    schema: str,
    table: Table[Any],
    until: int,
    skip: list[int],
    part: int = 0,
    parts: int = 1,
) -> None:
    """Fill ``schema.table`` with (part ``part`` of ``parts`` of) the rows the server computes from the
    log up to ``until``, without the events at ``skip``."""
    insert = sql.SQL("INSERT INTO {} ({}) ").format(
        sql.Identifier(schema, table.name), sql.SQL(", ").join(map(sql.Identifier, table.columns))
    )
    conn.execute(insert + _rebuild_select(table), _rebuild_params(until, skip, part, parts))


def _as_read_model_owner(conn: psycopg.Connection[Any]) -> None:
    """Create what follows as the read models' owner role (for this transaction), not as whoever runs it:
    a schema one user builds stays usable by the next."""
    row = conn.execute(
        "SELECT CASE WHEN to_regrole(%s) IS NULL THEN false ELSE pg_has_role(%s, 'MEMBER') END",
        (READ_MODEL_OWNER, READ_MODEL_OWNER),
    ).fetchone()
    if row and row[0]:
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(READ_MODEL_OWNER)))


def build_schema(
    conn: psycopg.Connection[Any],
    schema: str,
    until: int | None = None,
    progress: Progress | None = None,
    decoded: Decoded | None = None,
    tables: TablesProgress | None = None,
) -> FoldResult:
    """Create ``schema`` holding every read model as of ``until`` (committed in steps: ``conn`` must not
    be in a transaction; on failure ``schema`` is dropped). The fold skips the events ``decoded`` says
    decode.

    Two connections share the work. ``conn`` starts at once on the tables the server computes, the
    longest first (`_largest_first`); a second connection first reads the log to find the
    events that no longer decode (the fold: all of it when the server computes every table), then
    takes tables too. The server's queries must leave those events out, which only the fold finds:
    a query run before it ended runs as if there were none (there almost never are), and again
    without them if it found any (or if one of them made the query fail). Each table gets its
    indexes and statistics from the connection that filled it.

    Called inside a transaction (whose work no other connection sees), it does all on ``conn``.
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        result = fold(conn, until=until, progress=progress, decoded=decoded, checked=checked_through(conn))
        with conn.transaction():
            write_schema(conn, schema, result)
        return result
    with without_gc():
        with conn.transaction():
            _as_read_model_owner(conn)
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            _clone_tables(conn, schema, indexes=False)
            end = last_position(conn) if until is None else until
            census = _census(conn, end)
            order = _largest_first(conn, census)
            checked = checked_through(conn)
        try:
            return _fill(conn, schema, end, order, census, progress, decoded, tables, checked)
        except BaseException:
            with conn.transaction():
                _as_read_model_owner(conn)
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            raise


Census = dict[str, tuple[int, int]]


def _census(conn: psycopg.Connection[Any], until: int) -> Census:
    """Each event type in the log up to ``until``: how many events, and how many bytes of payload.

    One scan of the log, which tells which tables' queries would find nothing (each would scan it all
    to find that out) and which will take the server longest."""
    rows = conn.execute(
        "SELECT type, count(*), sum(pg_column_size(data)) FROM labctl.events WHERE position <= %s GROUP BY type",
        (until,),
    ).fetchall()
    return {name: (int(n), int(size)) for name, n, size in rows}


def _has_events(table: Table[Any], census: Census) -> bool:
    return not _reads(table).isdisjoint(census)


def _largest_first(conn: psycopg.Connection[Any], census: Census) -> list[Table[Any]]:
    """Every table, those the server will take longest to compute first (a connection left with the
    longest one alone at the end would make the rebuild wait for it): by the bytes of the events it
    reads, then by the size of the live table."""
    live = dict(
        conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
            (LIVE,),
        ).fetchall()
    )
    weight = {t.name: (sum(census.get(k, (0, 0))[1] for k in _reads(t)), live.get(t.name, 0)) for t in all_tables()}
    return sorted(all_tables(), key=lambda t: weight[t.name], reverse=True)


@functools.cache
def _reads(table: Table[Any]) -> set[str]:
    """The event types ``table``'s rebuild query reads (those it names), or its projection handles."""
    if table.rebuild_query is not None:
        return {name for name in _BY_TYPE if f"'{name}'" in table.rebuild_query}
    return {name for p in PROJECTIONS if table in p.tables for name in p.handlers}


def _fill(
    conn: psycopg.Connection[Any],
    schema: str,
    end: int,
    tables: list[Table[Any]],
    census: Census,
    progress: Progress | None,
    decoded: Decoded | None,
    tables_done: TablesProgress | None = None,
    checked: int = 0,
) -> FoldResult:
    # Jobs: fill a table (its query, then analyzed, committed; a table of several ``rebuild_parts``, one
    # job a part, analyzed once all are in), then build each of its indexes (queued first, for whichever
    # connection is free: the last table's indexes need not wait on one).
    todo: collections.deque[tuple[Table[Any], int, list[Statement] | None]] = collections.deque(
        (t, part, None) for t in tables if t.rebuild_query is not None for part in range(t.rebuild_parts)
    )
    with conn.transaction():
        builds = _index_builds(conn, schema, [t.name for t, _, _ in todo])
    parts_left = {t.name: t.rebuild_parts for t in tables}
    indexes_left: dict[str, int] = {}
    ready = threading.Condition()
    running = [0]  # jobs taken and not done (they may queue more)
    filled = [0]

    def one_filled() -> None:  # (under ``ready``)
        filled[0] += 1
        if tables_done is not None:
            tables_done(filled[0], len(tables))

    undecodable: list[int] | None = None  # known once the fold has ended
    guessed: list[Table[Any]] = []  # filled (a part at least) before that, as if every event decoded
    failed: list[Table[Any]] = []  # whose query (for a part at least) failed before that

    def note(into: list[Table[Any]], table: Table[Any]) -> None:
        with ready:
            if table not in into:
                into.append(table)

    errors: list[BaseException] = []

    def take() -> tuple[Table[Any], int, list[Statement] | None, list[int] | None] | None:
        with ready:
            while not todo and running[0] and not errors:
                ready.wait()
            if errors or not todo:
                return None
            running[0] += 1
            table, part, build = todo.popleft()
            return table, part, build, undecodable

    def fill(
        c: psycopg.Connection[Any], table: Table[Any], part: int, skip: list[int] | None
    ) -> list[list[Statement]] | None:
        """Fill part ``part`` of ``table`` (in a transaction of its own); once every part is in, return the
        table's index builds (none if its query failed), else None."""
        alone = table.rebuild_parts == 1  # (then analyzed in the same transaction)
        with c.transaction():
            _prepare(c, staging=True)
            if _has_events(table, census):  # (else left empty: no event could make a row)
                try:
                    with c.transaction():  # (a savepoint: the failed query is retried at the end)
                        _insert_server_built(c, schema, table, end, skip or [], part, table.rebuild_parts)
                except psycopg.Error:
                    if skip is not None and alone:
                        raise
                    note(failed, table)  # (a part may fail where the whole does not: see Table.rebuild_parts)
                else:
                    if skip is None:
                        note(guessed, table)
            if alone and table not in failed:
                _analyze(c, schema, table)
        with ready:
            parts_left[table.name] -= 1
            if parts_left[table.name]:
                return None
        if table in failed:
            return []
        if not alone:  # (the other parts are committed: the statistics see every row)
            with c.transaction():
                _prepare(c, staging=True)
                _analyze(c, schema, table)
        return builds[table.name]

    def work(c: psycopg.Connection[Any]) -> None:
        while (job := take()) is not None:
            table, part, build, skip = job
            if build is None:
                more = fill(c, table, part, skip)
            else:
                with c.transaction():
                    _prepare(c, staging=True)
                    for statement in build:
                        c.execute(statement)
                more = []
            with ready:
                running[0] -= 1
                if build is None:
                    if more is None:  # (another part of the table is still being filled)
                        ready.notify_all()
                        continue
                    indexes_left[table.name] = len(more)
                    todo.extendleft((table, 0, b) for b in reversed(more))
                else:
                    indexes_left[table.name] -= 1
                if table not in failed and indexes_left[table.name] == 0:
                    one_filled()
                ready.notify_all()

    def failing(exc: BaseException) -> None:
        with ready:
            errors.append(exc)
            ready.notify_all()

    def first() -> None:
        try:
            work(conn)
        except BaseException as exc:  # re-raised below
            failing(exc)

    starter = threading.Thread(target=first, name="labctl-rebuild", daemon=True)
    starter.start()
    try:
        with _another_connection(conn) as other:
            result = fold(other, until=end, progress=progress, decoded=decoded, checked=checked)
            with ready:
                undecodable = result.state.undecodable
            work(other)
    except BaseException as exc:
        failing(exc)
        conn.cancel_safe()
    finally:
        starter.join()
    if errors:
        raise errors[0]
    with conn.transaction():
        _prepare(conn)
        for table in dict.fromkeys(failed + (guessed if undecodable else [])):
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(schema, table.name)))
            _insert_server_built(conn, schema, table, end, undecodable or [])
            _index_and_analyze(conn, schema, table, indexes=table in failed)
            if table in failed:
                one_filled()
        rows_by_table = result.state.all_rows()
        for table in tables:
            rows = rows_by_table.get(table.name)
            if table.rebuild_query is None:
                if isinstance(rows, MemoryRows) and rows.rows:
                    _copy_rows(conn, schema, table, rows.rows.values())
                _index_and_analyze(conn, schema, table)
                one_filled()
        _clone_indexes(conn, schema, [CHECKPOINTS])
        _set_checkpoints(conn, schema, end)
        if _CHECKS_ONLY:  # (the fold found every event up to ``end`` that does not decode)
            _set_checked_through(conn, schema, end, result.state.undecodable)
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, CHECKPOINTS)))
    return result


@contextlib.contextmanager
def _another_connection(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """A second connection to ``conn``'s database, as the same user with the same settings."""
    with psycopg.connect(conn.info.dsn, password=conn.info.password, autocommit=True) as other:
        yield other


def _prepare(conn: psycopg.Connection[Any], *, staging: bool = False) -> None:
    """Settings of a transaction that builds read-model tables (as their owner role). ``staging``: one of the
    many transactions of a rebuild's staging schema, which need not wait for their commit to reach the disk
    (a crash before the swap leaves a staging schema the next rebuild drops, and the swap's own commit,
    which waits, writes out every one before it)."""
    if staging:
        conn.execute("SET LOCAL synchronous_commit = off")
    # Index builds sort every key: in memory rather than in batches spilled to disk.
    conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
    conn.execute(_SORT_MEMORY)
    _as_read_model_owner(conn)


def _index_and_analyze(conn: psycopg.Connection[Any], schema: str, table: Table[Any], *, indexes: bool = True) -> None:
    _analyze(conn, schema, table)
    if indexes:
        _clone_indexes(conn, schema, [table.name])


def _analyze(conn: psycopg.Connection[Any], schema: str, table: Table[Any]) -> None:
    """Give a filled table statistics (before its indexes: ANALYZE of these columns does not read them)."""
    # Fresh tables have no statistics until autovacuum gets to them: without these, the first
    # lookups after a replay plan for empty tables (seconds instead of milliseconds at 1M events).
    # JSON columns are left out: nothing filters on their values, and sampling their documents (recipes,
    # contexts) costs more than all the other columns together.
    columns = [c for c in table.columns if c not in table.json_columns]
    # A sample of 3,000 rows, not 30,000: the runs table's statistics took 0.6 s of a replay's critical
    # path, and the lookups of `labctl status` and the agent take as long after either (bench/RESULTS.md,
    # 2026-12-02 12:00). (SET LOCAL: for the rest of the transaction, which builds read models.)
    conn.execute("SET LOCAL default_statistics_target = 10")
    conn.execute(
        sql.SQL("ANALYZE {} ({})").format(
            sql.Identifier(schema, table.name), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
    )


def write_schema(conn: psycopg.Connection[Any], schema: str, result: FoldResult) -> None:
    """Create ``schema`` holding ``result``'s read models (in the caller's transaction)."""
    with without_gc():
        _prepare(conn)
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        _clone_tables(conn, schema, indexes=False)
        rows_by_table = result.state.all_rows()
        census = _census(conn, result.position)
        for table in all_tables():
            rows = rows_by_table.get(table.name)
            if table.rebuild_query is not None:
                if _has_events(table, census):
                    _insert_server_built(conn, schema, table, result.position, result.state.undecodable)
            elif isinstance(rows, MemoryRows) and rows.rows:
                _copy_rows(conn, schema, table, rows.rows.values())
            _index_and_analyze(conn, schema, table)
        _clone_indexes(conn, schema, [CHECKPOINTS])
        _set_checkpoints(conn, schema, result.position)
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, CHECKPOINTS)))


def make_read_only(conn: psycopg.Connection[Any], schema: str, why: str) -> None:
    for name in [CHECKPOINTS, *(t.name for t in all_tables())]:
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER read_only BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} "
                "FOR EACH STATEMENT EXECUTE FUNCTION labctl.labctl_refuse_change({})"
            ).format(sql.Identifier(schema, name), sql.Literal(why))
        )


class ReplayReport(msgspec.Struct):
    schema: str
    position: int
    events: int
    fold_seconds: float
    total_seconds: float


def replay_live(
    conn: psycopg.Connection[Any], progress: Progress | None = None, tables: TablesProgress | None = None
) -> ReplayReport:
    """Rebuild every projection into a fresh schema and swap it in atomically."""
    return _replay(conn, progress, time.perf_counter(), tables=tables)


def _replay(
    conn: psycopg.Connection[Any],
    progress: Progress | None,
    started: float,
    decoded: Decoded | None = None,
    tables: TablesProgress | None = None,
) -> ReplayReport:
    with _rebuilding(conn):
        staging = _staging_name()
        result = build_schema(conn, staging, progress=progress, decoded=decoded, tables=tables)
        return _swap(conn, staging, result, started)


def _swap_in(conn: psycopg.Connection[Any], result: FoldResult, started: float) -> ReplayReport:
    """Write ``result`` into a fresh schema, apply what was appended after it, and make it the live one."""
    with _rebuilding(conn):
        staging = _staging_name()
        with conn.transaction():
            write_schema(conn, staging, result)
        return _swap(conn, staging, result, started)


def _staging_name() -> str:
    return f"{STAGING_PREFIX}{int(time.time() * 1000)}"


@contextlib.contextmanager
def _rebuilding(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Take the rebuild lock, and drop what a rebuild killed before its swap left behind."""
    conn.execute("SELECT pg_advisory_lock(%s)", (REBUILD_LOCK,))
    try:
        with conn.transaction():
            _as_read_model_owner(conn)
            abandoned = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (STAGING_PREFIX,)
            ).fetchall()
            for (name,) in abandoned:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (REBUILD_LOCK,))


def _swap(conn: psycopg.Connection[Any], staging: str, result: FoldResult, started: float) -> ReplayReport:
    """Apply to ``staging`` what was appended after ``result``, and make it the live schema."""
    try:
        with conn.transaction():
            # Hold appends while the tail is applied and the schemas swap.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            _as_read_model_owner(conn)
            tail_state = _db_state(conn, staging)
            n = sum(apply(tail_state, page) for page in _pages(conn, result.position, last_position(conn)))
            _flush(tail_state)
            end = last_position(conn)
            _set_checkpoints(conn, staging, end)
            retired = f"{staging}_old"
            conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(LIVE), sql.Identifier(retired)))
            conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(staging), sql.Identifier(LIVE)))
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(retired)))
    except BaseException:
        with conn.transaction():
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(staging)))
        raise
    return ReplayReport(LIVE, end, result.events + n, result.seconds, time.perf_counter() - started)


def append_and_rebuild(
    conn: psycopg.Connection[Any],
    batches: Iterable[Sequence[NewEvent]],
    *,
    meta: EventMeta | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Append ``batches`` (each atomically) without projecting, then rebuild every read model once.

    For appends too big to project batch by batch (an import). When the server computes every read
    model, the batches are appended and then the log rebuilt as ``replay_live`` does (the appended
    events decode: they were just encoded). Otherwise the log as it was is folded first, then each
    batch's events are folded as the server returns them, in a thread of their own while the next
    batch is appended, and the result is swapped in. ``on_batch`` is told how many events are in
    after each batch. Stopped anywhere (killed, or ``on_batch`` raising), the read models lag the log
    until ``bring_up_to_date`` rebuilds them.
    """
    started = time.perf_counter()
    if _CHECKS_ONLY:
        before = last_position(conn)
        appended, contiguous = 0, True
        for batch in batches:
            with conn.transaction():
                stored = append_batch(conn, batch, meta=meta)
            contiguous = contiguous and (not stored or stored[0].position == before + appended + 1)
            appended += len(stored)
            if on_batch is not None:
                on_batch(appended)
        # The events appended here decode (they were just encoded): the rebuild's fold checks only the others
        # (all of them when another writer's came in between).
        return _replay(conn, None, started, (before, before + appended) if contiguous else None)
    base = fold(conn)
    pending: queue.Queue[list[StoredEvent] | None] = queue.Queue()
    folded = [base.events]
    failed: list[BaseException] = []

    def fold_appended() -> None:
        with without_gc():
            while (stored := pending.get()) is not None:
                if not failed:
                    try:
                        folded[0] += apply(base.state, stored, _REBUILD_BY_TYPE)
                    except BaseException as exc:  # re-raised by the appending thread
                        failed.append(exc)

    folder = threading.Thread(target=fold_appended, name="labctl-fold", daemon=True)
    folder.start()
    expected, appended = base.position + 1, 0
    try:
        for batch in batches:
            with conn.transaction():
                stored = append_batch(conn, batch, meta=meta)
            pending.put(stored)
            if stored and stored[0].position != expected:
                expected = -1  # another writer's events came in between: the fold below reads them all
            elif stored:
                expected = stored[-1].position + 1
            appended += len(stored)
            if on_batch is not None:
                on_batch(appended)
    finally:
        pending.put(None)
        folder.join()
    if failed:
        raise failed[0]
    if expected == -1:
        return _swap_in(conn, fold(conn), started)
    end = expected - 1
    return _swap_in(conn, FoldResult(base.state, end, folded[0], time.perf_counter() - started), started)


def replay_as_of(
    conn: psycopg.Connection[Any],
    position: int,
    progress: Progress | None = None,
    tables: TablesProgress | None = None,
) -> ReplayReport:
    """Build the world as it was at ``position`` into a read-only schema ``asof_<position>``."""
    started = time.perf_counter()
    schema = f"asof_{position}"
    with _rebuilding(conn):  # (built under a staging name: a rebuild killed meanwhile leaves no asof_ schema)
        staging = _staging_name()
        result = build_schema(conn, staging, position, progress, tables=tables)
        try:
            with conn.transaction():
                _as_read_model_owner(conn)
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
                conn.execute(
                    sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(staging), sql.Identifier(schema))
                )
                make_read_only(conn, schema, f"{schema} is a read-only snapshot of the past")
        except BaseException:
            with conn.transaction():
                _as_read_model_owner(conn)
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(staging)))
            raise
    return ReplayReport(schema, position, result.events, result.seconds, time.perf_counter() - started)


# -------------------------------------------------------------------- audit


class RowDiff(msgspec.Struct):
    table: str
    key: list[Any]
    problem: str  # "missing in live" | "not in the log" | "differs"
    columns: dict[str, list[Any]] = {}


def diff_live(
    conn: psycopg.Connection[Any],
    limit: int = 20,
    progress: Progress | None = None,
    tables: TablesProgress | None = None,
) -> tuple[int, list[RowDiff]]:
    """Rebuild and compare with the live tables, in one consistent snapshot (``progress``: events of the
    log read; ``tables``: tables compared). The tables are compared on two connections at once, the
    second in the first's snapshot, the longest first, as a rebuild fills them."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        position = checkpoint(conn)
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        result = fold(conn, until=position, progress=progress)
        diffs = _diff_tables(conn, row[0], _largest_first(conn, _census(conn, position)), result, limit, tables)
    return position, diffs[:limit] if limit else diffs


def _diff_tables(
    conn: psycopg.Connection[Any],
    snapshot: str,
    order: list[Table[Any]],
    result: FoldResult,
    limit: int,
    tables: TablesProgress | None,
) -> list[RowDiff]:
    """``_diff_table`` for every table of ``order``, shared by ``conn`` and a second connection in its
    ``snapshot``; the differences in the order of ``all_tables``."""
    todo = list(order)
    found: dict[str, list[RowDiff]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []
    others: list[psycopg.Connection[Any]] = []  # to cancel when this side fails (or is interrupted)

    def work(c: psycopg.Connection[Any]) -> None:
        while True:
            with lock:
                if not todo or errors:
                    return
                table = todo.pop(0)
            diffs = _diff_table(c, table, result, limit)
            with lock:
                found[table.name] = diffs
                if tables is not None:
                    tables(len(found), len(order))

    def second() -> None:
        try:
            with _another_connection(conn) as other, other.transaction():
                others.append(other)
                other.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                other.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
                work(other)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    helper = threading.Thread(target=second, name="labctl-audit", daemon=True)
    helper.start()
    try:
        work(conn)
    except BaseException as exc:
        errors.append(exc)
        for other in others:
            other.cancel_safe()
    finally:
        helper.join()
    if errors:
        raise errors[0]
    return [d for t in all_tables() for d in found.get(t.name, [])]


def _diff_table(conn: psycopg.Connection[Any], table: Table[Any], result: FoldResult, limit: int) -> list[RowDiff]:
    """How ``table``'s live rows differ from those ``result`` rebuilt (in ``diff_live``'s transaction)."""
    if table.rebuild_query is not None:
        return _diff_server_built(conn, table, result, limit)
    mem: Rows[Any] | None = result.state.all_rows().get(table.name)
    expected = mem.rows if isinstance(mem, MemoryRows) else {}
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(map(sql.Identifier, table.columns)), sql.Identifier(LIVE, table.name)
    )
    diffs: list[RowDiff] = []
    seen: set[Any] = set()
    for values in conn.execute(query):
        live_row = table.from_db(values)
        key = table.key_of(live_row)
        seen.add(key)
        if (diff := _row_diff(table, live_row, expected.get(key))) is not None:
            diffs.append(diff)
    diffs += [RowDiff(table.name, list(key), "missing in live") for key in expected.keys() - seen]
    return diffs


def _row_diff(table: Table[Any], live: Any | None, want: Any | None) -> RowDiff | None:
    """How a live row differs from the rebuilt one of the same key (None: it does not); one side may be absent."""
    if want is None:
        assert live is not None
        return RowDiff(table.name, list(table.key_of(live)), "not in the log")
    if live is None:
        return RowDiff(table.name, list(table.key_of(want)), "missing in live")
    if live == want:
        return None
    cols = {c: [getattr(live, c), getattr(want, c)] for c in table.columns if getattr(live, c) != getattr(want, c)}
    return RowDiff(table.name, list(table.key_of(live)), "differs", cols)


def _diff_server_built(
    conn: psycopg.Connection[Any], table: Table[Any], result: FoldResult, limit: int
) -> list[RowDiff]:
    """How the live rows of a table the server computes in rebuilds differ from what it computes
    (``diff_live`` for such a table, in its transaction): a full join in the server."""
    conn.execute(_SORT_MEMORY)
    n = len(table.columns)
    side = [
        sql.SQL(", ").join(sql.Identifier(alias, c) for c in table.columns) for alias in ("l", "r")
    ]  # live, rebuilt
    query = (
        sql.SQL("WITH rebuilt AS (")
        + _rebuild_select(table)
        + sql.SQL(
            ") SELECT {l}, {r} FROM {t} AS l FULL JOIN rebuilt AS r ON {on} WHERE ({l}) IS DISTINCT FROM ({r})"
        ).format(
            l=side[0],
            r=side[1],
            t=sql.Identifier(LIVE, table.name),
            on=sql.SQL(" AND ").join(sql.SQL("l.{k} = r.{k}").format(k=sql.Identifier(k)) for k in table.key),
        )
        + (sql.SQL(" LIMIT {}").format(limit) if limit else sql.SQL(""))
    )
    present = table.columns.index(table.key[0])  # NULL on the side of the join without the row
    diffs: list[RowDiff] = []
    for values in conn.execute(query, _rebuild_params(result.position, result.state.undecodable)):
        live, want = values[:n], values[n:]
        diff = _row_diff(
            table,
            table.from_db(live) if live[present] is not None else None,
            table.from_db(want) if want[present] is not None else None,
        )
        if diff is not None:
            diffs.append(diff)
    return diffs
