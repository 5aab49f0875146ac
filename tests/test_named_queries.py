"""Every named query in labctl's, events' and the web server's .sql files is valid SQL against the real schema.

Each one is PREPAREd (parsed, name-resolved and type-checked by Postgres, nothing run) on the current
schema, so a misspelt column or a parameter Postgres cannot type fails here, including queries of
paths no other test reaches.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import psycopg

from events.queries import parse_queries

# (package, file): every query file of the three packages, except the importer's, which reads the
# original labctl's tables (schema public) and is proven against a real original registry in test_import.
QUERY_FILES = sorted(
    (package, entry.name)
    for package in ("events", "labctl", "labctl.pipelines", "labctl.web")
    for entry in resources.files(package).iterdir()
    if entry.name.endswith(".sql") and entry.name not in ("importer.sql", "roles.sql")
)
# Queries of tables that only other databases hold: an original labctl registry's, a schema before version 4's.
ELSEWHERE = {
    ("labctl/maintenance.sql", "schema_version_before_4"),
    ("labctl/maintenance.sql", "original_registry_runs"),
}
PLACEHOLDER = re.compile(r"\{\w+\}")  # a name filled in with sql.Identifier at run time
NAMED = re.compile(r"%\((\w+)\)[sbt]")


def as_prepared(query: str) -> str:
    """psycopg's ``%(name)s`` / ``%s`` (and ``b``/``t``) placeholders as Postgres' ``$n`` (what psycopg sends)."""
    names: dict[str, int] = {}

    def named(m: re.Match[str]) -> str:
        return f"${names.setdefault(m.group(1), len(names) + 1)}"

    out = NAMED.sub(named, query)
    counter = iter(range(1, 1000))
    out = re.sub(r"%[sbt]", lambda _: f"${next(counter)}", out)
    return out.replace("%%", "%")


def all_queries() -> list[tuple[str, str, str]]:
    found = []
    for package, filename in QUERY_FILES:
        text = resources.files(package).joinpath(filename).read_text()
        for name, query in parse_queries(text).items():
            found.append((f"{package}/{filename}", name, query))
    return found


def test_query_files_are_found() -> None:
    files = {f for f, _, _ in all_queries()}
    assert {"events/queries.sql", "labctl/runs.sql", "labctl.web/queries.sql"} <= files


def test_every_named_query_prepares_on_the_schema(conn: psycopg.Connection[Any]) -> None:
    failures = []
    checked = 0
    for where, name, query in all_queries():
        if PLACEHOLDER.search(query) or (where, name) in ELSEWHERE:
            continue  # a name filled in with sql.Identifier at run time; its callers' tests run it
        try:
            with conn.transaction(force_rollback=True):
                conn.execute(f"PREPARE named_query_{checked} AS {as_prepared(query).rstrip(';')}")
        except psycopg.Error as exc:
            failures.append(f"{where} {name}: {str(exc).splitlines()[0]}")
        checked += 1
    assert not failures, "\n".join(failures)
    assert checked >= 130


# rows_as(conn, Struct, QUERIES["name"], ...) in labctl: the Struct is built from the columns by name.
ROWS_AS = re.compile(r'rows?_as\(\s*\w+,\s*(\w+),\s*(\w+)\["(\w+)"\]')


def test_every_struct_built_by_name_matches_its_querys_columns(conn: psycopg.Connection[Any]) -> None:
    import importlib
    from pathlib import Path

    import msgspec

    root = Path(__file__).resolve().parent.parent
    mismatched, checked = [], 0
    for path in sorted((root / "labctl").rglob("*.py")):
        for struct, queries, name in ROWS_AS.findall(path.read_text()):
            module = importlib.import_module(".".join(path.relative_to(root).with_suffix("").parts))
            fields = msgspec.structs.fields(getattr(module, struct))
            conn.execute(f"PREPARE rows_as_{checked} AS {as_prepared(getattr(module, queries)[name])}")
            described = conn.pgconn.describe_prepared(f"rows_as_{checked}".encode())
            columns = {described.fname(i).decode() for i in range(described.nfields)}
            required = {f.name for f in fields if f.required}
            if not (required <= columns <= {f.name for f in fields}):
                mismatched.append(f"{path.name} {struct} <- {name}: columns {sorted(columns)}")
            checked += 1
    assert not mismatched, "\n".join(mismatched)
    assert checked >= 14


def test_the_parents_outputs_query_gives_stage_outputs_fields_in_their_order(conn: psycopg.Connection[Any]) -> None:
    """``ParentOutputs.read`` builds each ``StageOutput`` from a row's columns by position (a tick reads the
    outputs of every released child's parents at once): after the pair's run id and role, the query's
    columns must be the struct's fields, in order."""
    import msgspec

    from labctl.pipelines.advance import QUERIES, StageOutput

    conn.execute(f"PREPARE parents_outputs AS {as_prepared(QUERIES['outputs_of_roles'])}")
    described = conn.pgconn.describe_prepared(b"parents_outputs")
    columns = [described.fname(i).decode() for i in range(described.nfields)]
    assert columns == ["run_id", "role", *(f.name for f in msgspec.structs.fields(StageOutput))]
