"""Issue 13 items 2 and 9: names and paths stay inside their roots; gc collects only what is yours."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

import projections
from events import NewEvent
from events.types import AliasSet, ArtifactRegistered, RunFinished, RunSubmitted
from labctl import gc
from labctl.app import App
from labctl.db import Database
from labctl.files import local_profile
from tests.conftest import USER, run_cli


def _count(conn: psycopg.Connection[Any], type_: str | None = None) -> int:
    if type_ is None:
        row = conn.execute("SELECT count(*) FROM events").fetchone()
    else:
        row = conn.execute("SELECT count(*) FROM events WHERE type = %s", (type_,)).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory outside every labctl root that must survive."""
    path = tmp_path / "victim"
    path.mkdir()
    (path / "precious.txt").write_text("keep me\n")
    return path


def _alias_recipe(tmp_path: Path, alias: str) -> Path:
    recipe = tmp_path / "escape.toml"
    recipe.write_text(
        'name = "escape"\ncommand = "true"\n[params]\nx = "ok"\n'
        f'[outputs.o]\ntype = "dataset"\nmarker = "f"\nalias = "{alias}"\n'
    )
    return recipe


@pytest.mark.parametrize(
    ("alias", "set_"),
    [
        ("../../../../../../../../{victim}", []),
        ("out-{params.x}", ["--set", "params.x=/../../../../../../../../{victim}"]),
        ("{params.x}", ["--set", "params.x=.."]),
    ],
)
def test_an_output_alias_that_climbs_out_of_its_root_is_refused_before_anything_is_written(
    env: dict[str, str],
    conn: psycopg.Connection[Any],
    home: Path,
    tmp_path: Path,
    victim: Path,
    alias: str,
    set_: list[str],
) -> None:
    rel = str(victim).lstrip("/")
    recipe = _alias_recipe(tmp_path, alias.replace("{victim}", rel))
    proc = run_cli(env, "run", str(recipe), *[s.replace("{victim}", rel) for s in set_])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "outputs.o.alias" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert _count(conn) == 0
    assert not (home / "runs").exists() or not any((home / "runs").rglob(".lab"))
    assert (victim / "precious.txt").read_text() == "keep me\n"


@pytest.mark.parametrize("user", [".", "..", "a/b", "runs", "-x"])
def test_a_user_name_that_is_not_one_path_component_is_refused(env: dict[str, str], user: str) -> None:
    proc = run_cli({**env, "LABCTL_USER": user}, "status")
    assert proc.returncode == 2, proc.stderr
    assert "user name" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_removing_an_alias_with_a_bad_name_appends_nothing(env: dict[str, str], conn: psycopg.Connection[Any]) -> None:
    # An older labctl let this alias in; removing it must not record AliasRemoved and then fail.
    projections.record(conn, [NewEvent(f"alias-{USER}/../x", AliasSet(user=USER, alias="../x", artifact_id="a"))])
    proc = run_cli(env, "alias", "rm", "../x")
    assert proc.returncode == 2, proc.stderr
    assert _count(conn, "AliasRemoved") == 0


@pytest.fixture
def app(db_url: str, env: dict[str, str]) -> Iterator[App]:
    home = Path(env["LABCTL_HOME"])
    a = App(config=local_profile(home), config_path=None, home=home, db=Database(db_url), user=USER)
    yield a
    a.close()


def _artifact(app: App, user: str, path: Path, run_id: str) -> str:
    """A finished run's unaliased artifact recorded at ``path`` (shaped like a store object)."""
    digest = path.name
    aid = f"artifact_{digest[:16]}"
    conn = app.db.conn
    sub = RunSubmitted(run_id=run_id, name="r", user=user, executor="local", run_dir="/r", recipe={})
    projections.record(conn, [NewEvent(f"run-{run_id}", sub, 0)])
    projections.record(conn, [NewEvent(f"run-{run_id}", RunFinished(run_id=run_id, state="succeeded", exit_code=0))])
    registered = ArtifactRegistered(
        artifact_id=aid, hash=digest, kind="dataset", path=str(path), user=user, producer_run_id=run_id
    )
    projections.record(conn, [NewEvent(f"artifact-{aid}", registered, 0)])
    return aid


def _object_at(root: Path, seed: str) -> Path:
    digest = hashlib.sha256(seed.encode()).hexdigest()
    path = root / "_objects" / digest[:2] / digest
    path.mkdir(parents=True)
    (path / "data").write_text(seed)
    return path


def test_gc_collects_only_your_artifacts_unless_forced(app: App) -> None:
    store = Path(app.config.filesystem.artifact_roots["dataset"])
    mine = _artifact(app, USER, _object_at(store, "mine"), "run_mine")
    bobs_path = _object_at(store, "bobs")
    bobs = _artifact(app, "bob", bobs_path, "run_bobs")
    later = datetime.now(UTC) + timedelta(days=31)

    report = gc.gc(app, older_than=timedelta(days=30), remove=True, now=later)
    assert [c.artifact_id for c in report.artifacts] == [mine]
    assert bobs_path.is_dir()

    forced = gc.gc(app, older_than=timedelta(days=30), remove=True, now=later, force=True)
    assert [c.artifact_id for c in forced.artifacts] == [bobs]


def test_gc_never_deletes_a_recorded_path_outside_the_artifact_roots(app: App, tmp_path: Path) -> None:
    outside = _object_at(tmp_path / "elsewhere", "victim")  # shaped like an object, but not in a store
    _artifact(app, USER, outside, "run_x")
    later = datetime.now(UTC) + timedelta(days=31)
    report = gc.gc(app, older_than=timedelta(days=30), remove=True, now=later, force=True)
    assert report.artifacts == []
    assert (outside / "data").read_text() == "victim"


def test_gc_with_a_retention_under_a_minute_needs_force(env: dict[str, str], conn: psycopg.Connection[Any]) -> None:
    proc = run_cli(env, "gc", "--older-than", "0s", "--yes")
    assert proc.returncode == 2 and "--force" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert _count(conn) == 0
    assert run_cli(env, "gc", "--older-than", "0s", "--yes", "--force").returncode == 0
