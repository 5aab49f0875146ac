"""The schema: created once, idempotent, and an old database upgrades to exactly schema.sql."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from labctl.db import connect, current_schema_version, ensure_schema, schema_sql, schema_version_of_file
from tests.conftest import _with_dbname

V1 = Path(__file__).parent / "data" / "schema_v1.sql"

CATALOG = {
    "columns": """
        SELECT table_schema, table_name, column_name, data_type, is_nullable, column_default, ordinal_position
        FROM information_schema.columns WHERE table_schema IN ('labctl', 'live') ORDER BY 1, 2, 7""",
    "indexes": """
        SELECT schemaname, indexname, indexdef FROM pg_indexes
        WHERE schemaname IN ('labctl', 'live') ORDER BY 1, 2""",
    "constraints": """
        SELECT n.nspname, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c
        JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname IN ('labctl', 'live') ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'labctl' ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger
        WHERE NOT tgisinternal ORDER BY 1, 2""",
    "sequences": "SELECT sequence_schema, sequence_name, data_type FROM information_schema.sequences ORDER BY 1, 2",
    "owners and grants": """
        SELECT n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner), c.relacl::text FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('labctl', 'live') ORDER BY 1, 2""",
    "function owners and grants": """
        SELECT p.proname, pg_get_userbyid(p.proowner), p.prosecdef, p.proacl::text FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'labctl' ORDER BY 1""",
    "schema owners": """
        SELECT nspname, pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace
        WHERE nspname IN ('labctl', 'live') ORDER BY 1""",
}


def _catalog(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    return {name: conn.execute(query).fetchall() for name, query in CATALOG.items()}


@pytest.fixture
def empty_db(server_url: str) -> Iterator[str]:
    names = []

    def make() -> str:
        name = f"labctl_s_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        names.append(name)
        return _with_dbname(server_url, name)

    yield make  # type: ignore[misc]
    with psycopg.connect(server_url, autocommit=True) as admin:
        for name in names:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_upgrading_the_oldest_schema_gives_exactly_schema_sql(empty_db: Any) -> None:
    with connect(empty_db()) as old, connect(empty_db()) as fresh:
        with old.transaction():
            old.execute("SET LOCAL search_path = public")
            old.execute(V1.read_text().encode())
        assert current_schema_version(old) == 1
        before, after = ensure_schema(old)
        assert (before, after) == (1, schema_version_of_file(schema_sql()))
        ensure_schema(fresh)
        assert _catalog(old) == _catalog(fresh)


def test_ensure_schema_is_idempotent_and_records_the_version(empty_db: Any) -> None:
    with connect(empty_db()) as conn:
        assert ensure_schema(conn)[0] is None
        version = current_schema_version(conn)
        assert ensure_schema(conn) == (version, version)
        assert conn.execute("SELECT count(*), max(version) FROM schema_version").fetchone() == (1, version)


def test_concurrent_first_connects_create_the_schema_once(empty_db: Any) -> None:
    import threading

    for _ in range(3):
        url = empty_db()
        errors: list[BaseException] = []

        def create(u: str = url, errors: list[BaseException] = errors) -> None:
            try:
                with connect(u) as c:
                    ensure_schema(c)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=create) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with connect(url) as c:
            assert c.execute("SELECT count(*) FROM schema_version").fetchone() == (1,)


def test_upgrading_to_12_turns_json_nulls_of_read_models_into_sql_null(empty_db: Any) -> None:
    # Before version 12 an eval without results was stored with metrics = JSON null, which
    # `metrics IS NOT NULL` (the evals with results) counted; the upgrade leaves real results alone.
    with connect(empty_db()) as conn:
        ensure_schema(conn)
        with conn.transaction():
            conn.execute("DELETE FROM labctl.schema_version")
            conn.execute("INSERT INTO labctl.schema_version (version) VALUES (11)")
            conn.execute(
                "INSERT INTO live.evals (eval_key, policy, checkpoint_artifact_id, eval_recipe_hash, run_id, metrics, "
                "requested_at) VALUES ('pending', 'p', 'a1', 'h', 'r1', 'null'::jsonb, now()), "
                "('done', 'p', 'a2', 'h', 'r2', '{\"acc\": 0.5}'::jsonb, now())"
            )
        assert ensure_schema(conn)[0] == 11
        rows = conn.execute("SELECT eval_key, metrics FROM live.evals WHERE metrics IS NOT NULL").fetchall()
        assert rows == [("done", {"acc": 0.5})]
