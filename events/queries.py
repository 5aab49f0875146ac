"""Plain SQL kept in .sql files, split by ``-- name: <name>`` markers."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar

import psycopg
from psycopg.rows import class_row

T = TypeVar("T")
#: a query's parameters: by name (``%(name)s``), or by position (``%s``)
Params = Mapping[str, Any] | Sequence[Any]

_MARKER = re.compile(r"^--\s*name:\s*(\S+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split a .sql file into ``{name: query}`` by its ``-- name:`` markers."""
    parts = _MARKER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


@functools.cache
def load_queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    """Load a package's query file (call at import time; modules sharing a file share one load)."""
    return parse_queries(resources.files(package).joinpath(filename).read_text())


def rows_as(conn: psycopg.Connection[Any], row: type[T], query: str, params: Params | None = None) -> list[T]:
    """The rows of ``query`` as ``row`` values (a msgspec Struct or dataclass), built from its columns by name."""
    with conn.cursor(row_factory=class_row(row)) as cur:
        return cur.execute(query, params).fetchall()


def row_as(conn: psycopg.Connection[Any], row: type[T], query: str, params: Params | None = None) -> T | None:
    """The first row of ``query`` as a ``row`` value, or None when it returns none."""
    with conn.cursor(row_factory=class_row(row)) as cur:
        return cur.execute(query, params).fetchone()
