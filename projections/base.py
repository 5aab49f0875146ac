"""What a projection is, and the two places its rows can live while it runs.

A projection owns some tables and has one handler per event type. A handler
reads and writes rows by primary key through a ``Rows`` object, so the same
handler serves both ways of applying events:

* ``DbRows`` — inline, in the append transaction: rows are fetched by key
  (a batch's first reads all at once: ``engine._prefetch`` runs the handlers
  dry over ``KeysRead`` to learn which), changed in memory and upserted at
  the end (``labctl run`` then ``status`` is exact).
* ``MemoryRows`` — rebuilds: every row lives in a dict and each table is
  written once with COPY at the end (rebuild speed is a headline number).

A table can also say how the server computes it from the log (``rebuild_query``):
a rebuild then runs that query instead of the handlers' puts (``ServerBuiltRows``
drops them), so rows too many to hold in memory never are. Inline projection
still runs the handler, and the audit compares the two.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, Generic, TypeVar

import msgspec
import psycopg
from psycopg import sql

from events import StoredEvent
from events.codec import encode  # psycopg's default (stdlib json) is most of the cost of JSON columns

R = TypeVar("R", bound=msgspec.Struct)


Key = tuple[Any, ...]


@dataclass(frozen=True)
class Table(Generic[R]):
    """A projection table: its row type (fields = columns, in order) and key columns."""

    name: str
    row_type: type[R]
    key: tuple[str, ...]
    json_columns: frozenset[str] = frozenset()
    # A SELECT of this table's columns, in order, from the log up to %(until)s without the events at
    # positions %(skip)s (see State.undecodable): how a rebuild gets the rows, instead of folding them.
    rebuild_query: str | None = None
    # How many jobs a rebuild fills the table in, at once on both of its connections (for a table whose
    # query is most of a rebuild): the query then keeps only part %(part)s of %(parts)s of the rows (every
    # caller passes both; part 0 of 1: all of them). A part's query may fail where the whole would not
    # (runs_rebuild's on a log that does not split): the table is then computed again in one part.
    rebuild_parts: int = 1

    @property
    def columns(self) -> tuple[str, ...]:
        return self.row_type.__struct_fields__

    @cached_property
    def _key_getter(self) -> Callable[[Any], Any]:
        return operator.attrgetter(*self.key)

    def key_of(self, row: R) -> Key:
        # The hottest line of a rebuild: attrgetter beats a generator over getattr.
        value = self._key_getter(row)
        return value if len(self.key) > 1 else (value,)

    @cached_property
    def _values_getter(self) -> Callable[[Any], Any]:
        return operator.attrgetter(*self.columns)

    @cached_property
    def _json_indexes(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.columns) if c in self.json_columns)

    def to_db(self, row: R) -> Sequence[Any]:
        # Called once per row of a replay (millions): one C-level attrgetter, and only the JSON columns
        # touched, encoded to text the server parses as jsonb (no wrapper object and dumper per value).
        # None is SQL NULL, not a JSON null: `metrics IS NOT NULL` means "has metrics".
        values = self._values_getter(row)
        if len(self.columns) == 1:
            values = (values,)
        if not self.json_columns:
            return values  # type: ignore[no-any-return]
        values = list(values)
        for i in self._json_indexes:
            if (v := values[i]) is not None:
                values[i] = encode(v).decode()
        return values

    def from_db(self, values: Iterable[Any]) -> R:
        return self.row_type(**dict(zip(self.columns, values, strict=True)))


class Rows(Generic[R]):
    """Rows of one table, by primary key."""

    # False where a rebuild computes the table in the server: a handler may skip building its rows.
    collects = True

    def get(self, *key: Any) -> R | None:
        raise NotImplementedError

    def put(self, row: R) -> None:
        raise NotImplementedError

    def delete(self, *key: Any) -> None:
        raise NotImplementedError


class MemoryRows(Rows[R]):
    def __init__(self, table: Table[R]) -> None:
        self.table = table
        self.rows: dict[Key, R] = {}

    def get(self, *key: Any) -> R | None:
        return self.rows.get(key)

    def put(self, row: R) -> None:
        self.rows[self.table.key_of(row)] = row

    def delete(self, *key: Any) -> None:
        self.rows.pop(key, None)


class ServerBuiltRows(Rows[R]):
    """A rebuild's rows of a table the server computes from the log (``Table.rebuild_query``)."""

    collects = False

    def __init__(self, table: Table[R]) -> None:
        self.table = table

    def get(self, *key: Any) -> R | None:
        raise TypeError(f"{self.table.name} is computed by the server in a rebuild: a handler cannot read it back")

    def put(self, row: R) -> None:
        pass

    def delete(self, *key: Any) -> None:
        raise TypeError(f"{self.table.name} is computed by the server in a rebuild: a handler cannot delete from it")


_MISSING = object()


class KeysRead(Rows[R]):
    """Rows that are never there, noting each key asked for: a dry run of a batch's handlers through
    these names the rows they will read first (rows they find then lead to others, read one by one)."""

    collects = False  # what a handler only writes, the dry run need not build

    def __init__(self, keys: set[Key]) -> None:
        self.keys = keys

    def get(self, *key: Any) -> R | None:
        self.keys.add(key)
        return None

    def put(self, row: R) -> None:
        pass

    def delete(self, *key: Any) -> None:
        pass


class DbRows(Rows[R]):
    """Rows read by key from ``schema.table`` and written back on ``flush``."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str, table: Table[R]) -> None:
        self.conn = conn
        self.table = table
        self.ident = sql.Identifier(schema, table.name)
        self.sql = _statements(schema, table)
        self.cache: dict[Key, R | None] = {}
        self.dirty: set[Key] = set()

    def get(self, *key: Any) -> R | None:
        cached = self.cache.get(key, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        values = self.conn.execute(self.sql.select_by_key, key).fetchone()
        row = self.table.from_db(values) if values is not None else None
        self.cache[key] = row
        return row

    def prefetch(self, keys: Iterable[Key]) -> None:
        """Read the rows of ``keys`` not read yet in one query (absent ones cached as absent), so that
        a batch's handlers do not cost a round trip per key."""
        wanted = [k for k in dict.fromkeys(keys) if k not in self.cache and len(k) == len(self.table.key)]
        for start in range(0, len(wanted), _PREFETCH_CHUNK):
            self._prefetch(wanted[start : start + _PREFETCH_CHUNK])

    def _prefetch(self, wanted: list[Key]) -> None:
        query: bytes | sql.Composed
        if len(self.table.key) == 1:
            query = self.sql.select_by_keys
            params: list[Any] = [[k[0] for k in wanted]]
        else:
            one = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(self.table.key)))
            query = sql.SQL("SELECT {cols} FROM {t} WHERE ({keys}) IN ({tuples})").format(
                cols=self._cols,
                t=self.ident,
                keys=sql.SQL(", ").join(map(sql.Identifier, self.table.key)),
                tuples=sql.SQL(", ").join([one] * len(wanted)),
            )
            params = [v for k in wanted for v in k]
        for k in wanted:
            self.cache[k] = None
        for values in self.conn.execute(query, params).fetchall():
            row = self.table.from_db(values)
            self.cache[self.table.key_of(row)] = row

    def put(self, row: R) -> None:
        key = self.table.key_of(row)
        self.cache[key] = row
        self.dirty.add(key)

    def delete(self, *key: Any) -> None:
        self.cache[key] = None
        self.dirty.add(key)

    @property
    def copies(self) -> bool:
        """Whether ``flush`` will COPY (which psycopg's pipeline mode cannot hold)."""
        return len(self.dirty) >= _COPY_FROM

    def flush(self) -> None:
        if not self.dirty:
            return
        upserts = [self.cache[k] for k in self.dirty if self.cache[k] is not None]
        deletes = [k for k in self.dirty if self.cache[k] is None]
        if upserts:
            rows = [self.table.to_db(r) for r in upserts if r is not None]
            if len(rows) >= _COPY_FROM:
                self._upsert_by_copy(rows)
            else:
                # one statement of every row, not one per row: psycopg's work per statement is most of a flush
                with psycopg.RawCursor(self.conn) as cur:
                    cur.execute(self.sql.upsert(len(rows)), [v for row in rows for v in row])
        if deletes:
            with self.conn.cursor() as cur:
                cur.executemany(self.sql.delete, deletes)
        self.dirty.clear()

    @property
    def _cols(self) -> sql.Composable:
        return _columns(self.table)

    @property
    def _on_conflict(self) -> sql.Composable:
        return _on_conflict(self.table)

    def _upsert_by_copy(self, rows: list[Sequence[Any]]) -> None:
        """Many rows (an import, a long catch-up): COPY them into a scratch table, then one upsert from it."""
        scratch = sql.Identifier(f"_upsert_{self.table.name}")
        self.conn.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {s} (LIKE {t}) ON COMMIT DELETE ROWS").format(
                s=scratch, t=self.ident
            )
        )
        copy = sql.SQL("COPY {s} ({c}) FROM STDIN").format(s=scratch, c=self._cols)
        with self.conn.cursor() as cur, cur.copy(copy) as cp:
            for row in rows:
                cp.write_row(row)
        self.conn.execute(
            sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM {s} {conflict}").format(
                t=self.ident, c=self._cols, s=scratch, conflict=self._on_conflict
            )
        )
        self.conn.execute(sql.SQL("TRUNCATE {s}").format(s=scratch))


def _columns(table: Table[Any]) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, table.columns))


def _on_conflict(table: Table[Any]) -> sql.Composable:
    non_key = [c for c in table.columns if c not in table.key]
    return sql.SQL("ON CONFLICT ({key}) DO UPDATE SET {sets}").format(
        key=sql.SQL(", ").join(map(sql.Identifier, table.key)),
        sets=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in non_key),
    )


@dataclass(frozen=True)
class _Statements:
    """The statements ``DbRows`` sends for one table, as text: composed once per process, not per append
    (composing them was a tenth of the agent's CPU per job)."""

    select_by_key: bytes
    select_by_keys: bytes  # a one-column key: ``= ANY(%s)``
    insert: bytes  # ``INSERT INTO t (cols) VALUES``, then a row's placeholders per row, then ``on_conflict``
    columns: int
    on_conflict: bytes
    delete: bytes
    _upserts: dict[int, bytes] = field(default_factory=dict, compare=False, hash=False)

    def upsert(self, rows: int) -> bytes:
        """An upsert of ``rows`` rows (their keys distinct: one statement may not change a row twice), with
        ``$n`` placeholders, for a ``RawCursor``: psycopg parses a ``%s`` query again on every execution
        once it has more than 50 parameters (a flush of 8 runs rows took 3 ms), and this text is made once
        per row count."""
        text = self._upserts.get(rows)
        if text is None:
            n = self.columns
            values = ", ".join(
                "(" + ", ".join(f"${i * n + c}" for c in range(1, n + 1)) + ")" for i in range(rows)
            ).encode()
            text = self._upserts[rows] = b"%s %s %s" % (self.insert, values, self.on_conflict)
        return text


@lru_cache(maxsize=256)  # (bounded: a rebuild's staging schema has a name of its own)
def _statements(schema: str, table: Table[Any]) -> _Statements:
    t = sql.Identifier(schema, table.name)
    by_key = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in table.key)
    return _Statements(
        select_by_key=sql.SQL("SELECT {cols} FROM {t} WHERE {cond}")
        .format(cols=_columns(table), t=t, cond=by_key)
        .as_bytes(),
        select_by_keys=sql.SQL("SELECT {cols} FROM {t} WHERE {k} = ANY(%s)")
        .format(cols=_columns(table), t=t, k=sql.Identifier(table.key[0]))
        .as_bytes(),
        insert=sql.SQL("INSERT INTO {t} ({cols}) VALUES").format(t=t, cols=_columns(table)).as_bytes(),
        columns=len(table.columns),
        on_conflict=_on_conflict(table).as_bytes(),
        delete=sql.SQL("DELETE FROM {t} WHERE {cond}").format(t=t, cond=by_key).as_bytes(),
    )


# From this many rows a flush COPYs them instead of sending them in one upsert.
_COPY_FROM = 200
# Keys read per prefetch query (a query's parameters stay few).
_PREFETCH_CHUNK = 500


class State:
    """The rows of every table, handed to handlers."""

    def __init__(self, make: Callable[[Table[Any]], Rows[Any]]) -> None:
        self._make = make
        self._rows: dict[str, Rows[Any]] = {}
        # Positions of events whose data no longer decodes as their type: the handlers skipped them,
        # so a table computed by the server must skip them too.
        self.undecodable: list[int] = []

    def rows(self, table: Table[R]) -> Rows[R]:
        rows = self._rows.get(table.name)
        if rows is None:
            rows = self._rows[table.name] = self._make(table)
        return rows

    def all_rows(self) -> dict[str, Rows[Any]]:
        return self._rows


Handler = Callable[[State, StoredEvent], None]


@dataclass
class Projection:
    """A read model: the tables it owns and how each event type changes them."""

    name: str
    tables: list[Table[Any]]
    handlers: dict[str, Handler] = field(default_factory=dict)

    def on(self, event_type: type[Any]) -> Callable[[Handler], Handler]:
        """Decorator registering a handler for ``event_type``."""

        def register(fn: Handler) -> Handler:
            self.handlers[event_type.__name__] = fn
            return fn

        return register
