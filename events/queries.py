"""Plain SQL kept in .sql files, split by ``-- name: <name>`` markers."""

from __future__ import annotations

import re
from importlib import resources

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


def load_queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    """Load a package's query file once (call at import time)."""
    return parse_queries(resources.files(package).joinpath(filename).read_text())
