"""Artifact commands: register-external, artifacts, alias set/ls/rm, lineage and gc, against real Postgres and files."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

import projections
from events import NewEvent
from events.types import (
    AliasRemoved,
    AliasSet,
    ArtifactRegistered,
    ArtifactsCollected,
    CacheClaimed,
    CacheReleased,
    InputRef,
    OutputLinked,
    RunFinished,
    RunSubmitted,
)
from labctl import aliases, artifact_queries, cache, external, gc, lineage
from labctl.app import App
from labctl.artifacts import ArtifactMeta, artifact_id, dir_content_hash, object_dir, store_output
from labctl.db import Database
from labctl.errors import InputError, UserError
from labctl.files import local_profile
from labctl.submit import resolve_alias
from tests.conftest import USER, run_cli


@pytest.fixture
def app(db_url: str, env: dict[str, str]) -> Any:
    home = Path(env["LABCTL_HOME"])
    a = App(config=local_profile(home), config_path=None, home=home, db=Database(db_url), user=USER)
    yield a
    a.close()


def _types(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute("SELECT type FROM events ORDER BY position")]


def _root(app: App, kind: str) -> Path:
    return Path(app.config.filesystem.artifact_roots[kind])


def _run(
    conn: psycopg.Connection[Any],
    run_id: str,
    *,
    inputs: list[InputRef] | None = None,
    state: str | None = "succeeded",
    cache_key: str | None = None,
) -> None:
    submitted = RunSubmitted(
        run_id=run_id,
        name=run_id.removeprefix("run_"),
        user=USER,
        executor="local",
        run_dir=f"/runs/{run_id}",
        recipe={"name": run_id},
        inputs=inputs or [],
        cache_key=cache_key,
    )
    projections.record(conn, [NewEvent(f"run-{run_id}", submitted, 0)])
    if state is not None:
        projections.record(conn, [NewEvent(f"run-{run_id}", RunFinished(run_id=run_id, state=state, exit_code=0))])


def _output(app: App, run_id: str, files: dict[str, bytes], *, kind: str = "dataset", alias: str | None = None) -> str:
    """Real bytes moved into <root>/_objects by store_output, recorded as finish.py records outputs."""
    src = Path(app.home) / "outputs" / run_id / uuid.uuid4().hex[:8]
    src.mkdir(parents=True)
    for name, data in files.items():
        (src / name).write_bytes(data)
    digest = dir_content_hash(src)
    aid = artifact_id(digest)
    meta = ArtifactMeta(
        id=aid, hash=digest, kind=kind, producer_run_id=run_id, created_by=USER, created_at="now", source_path=str(src)
    )
    stored = store_output(_root(app, kind), src, digest, meta)
    batch = [
        NewEvent(
            f"artifact-{aid}",
            ArtifactRegistered(
                artifact_id=aid, hash=digest, kind=kind, path=str(stored), user=USER, producer_run_id=run_id
            ),
        ),
        NewEvent(f"run-{run_id}", OutputLinked(run_id=run_id, role="out", artifact_id=aid, path=str(stored))),
    ]
    if alias:
        batch.append(NewEvent(f"alias-{USER}/{alias}", AliasSet(user=USER, alias=alias, artifact_id=aid)))
    projections.record(app.db.conn, batch)
    return aid


def _input(aid: str, role: str = "data") -> InputRef:
    return InputRef(role=role, type="artifact", path=f"/objects/{aid}", artifact_id=aid)


# --------------------------------------------------------- register-external


def test_register_external_then_an_artifact_input_with_that_alias_resolves_to_it(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "imagenet"
    data.mkdir()
    (data / "train.bin").write_bytes(b"x" * 10)
    out = run_cli(env, "register-external", "--alias", "imagenet", "--path", str(data), check=True).stdout
    assert "registered artifact_" in out
    assert _types(conn) == ["ArtifactRegistered", "AliasSet"]
    found = resolve_alias(conn, USER, "imagenet")
    assert found is not None
    aid, path, digest, alias = found
    assert (path, alias) == (str(data.resolve()), "imagenet")
    assert aid == artifact_id(digest)
    link = Path(env["LABCTL_HOME"]) / "artifacts" / "external" / "aliases" / USER / "imagenet"
    assert link.is_symlink() and link.resolve() == data.resolve()
    assert (data / "train.bin").read_bytes() == b"x" * 10  # left where it was


def test_register_external_of_a_missing_path_exits_2_and_records_nothing(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    proc = run_cli(env, "register-external", "--alias", "gone", "--path", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"labctl: error: {tmp_path / 'nope'} does not exist"]
    assert _types(conn) == []


def test_registering_the_same_path_again_only_sets_another_alias(app: App, tmp_path: Path) -> None:
    data = tmp_path / "corpus.txt"
    data.write_text("hello")
    first = external.register_external(app, alias="corpus", path=str(data))
    again = external.register_external(app, alias="corpus2", path=str(tmp_path / "." / "corpus.txt"))
    assert first.new and not again.new
    assert first.artifact_id == again.artifact_id
    assert _types(app.db.conn) == ["ArtifactRegistered", "AliasSet", "AliasSet"]
    listed = artifact_queries.list_artifacts(app.db.conn)
    assert [(a.id, a.aliases, a.size_bytes) for a in listed] == [
        (first.artifact_id, [f"{USER}/corpus", f"{USER}/corpus2"], 5)
    ]


def test_register_external_with_a_kind_without_an_artifact_root_is_refused(app: App, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no artifact root for kind 'weird'"):
        external.register_external(app, alias="w", path=str(tmp_path), kind="weird")
    assert _types(app.db.conn) == []


# ------------------------------------------------------------------ listing


def test_artifacts_lists_kind_aliases_producer_and_hides_collected_ones_unless_all(
    app: App, env: dict[str, str]
) -> None:
    _run(app.db.conn, "run_prep")
    kept = _output(app, "run_prep", {"a.txt": b"a"}, alias="prepped")
    gone = _output(app, "run_prep", {"b.txt": b"b"}, kind="model")
    projections.record(
        app.db.conn, [NewEvent("gc", ArtifactsCollected(artifact_ids=[gone], actor=USER, reason="test"))]
    )
    table = run_cli(env, "artifacts", check=True).stdout.splitlines()
    assert table[0].split() == ["ID", "KIND", "ALIASES", "PRODUCER", "CREATED", "PATH"]
    assert len(table) == 2 and table[1].split()[:4] == [kept, "dataset", "prepped", "run_prep"]
    everything = run_cli(env, "artifacts", "--all", "--json", check=True).stdout.splitlines()
    rows = {r["id"]: r for r in map(json.loads, everything)}
    assert rows.keys() == {kept, gone} and rows[gone]["removed_at"] is not None
    only_models = run_cli(env, "artifacts", "--all", "--kind", "model", "--json", check=True).stdout.splitlines()
    assert [json.loads(x)["id"] for x in only_models] == [gone]
    assert run_cli(env, "artifacts", "--user", "bob", "--json", check=True).stdout == ""


# ------------------------------------------------------------------ aliases


def test_alias_set_ls_rm_round_trip_keeps_the_symlink_in_sync(app: App, env: dict[str, str]) -> None:
    _run(app.db.conn, "run_prep")
    first = _output(app, "run_prep", {"a.txt": b"a"})
    second = _output(app, "run_prep", {"b.txt": b"b"})
    link = _root(app, "dataset") / "aliases" / USER / "best"

    run_cli(env, "alias", "set", "best", first[:14], check=True)  # an id prefix
    assert link.is_symlink() and link.resolve() == object_dir(_root(app, "dataset"), _hash(app, first)).resolve()
    run_cli(env, "alias", "set", "other", "best", check=True)  # another alias
    run_cli(env, "alias", "set", "best", second, check=True)  # re-pointed
    assert link.resolve() == object_dir(_root(app, "dataset"), _hash(app, second)).resolve()

    listed = run_cli(env, "alias", "ls", check=True).stdout.splitlines()
    assert [line.split()[:3] for line in listed[1:]] == [[USER, "best", second], [USER, "other", first]]
    assert run_cli(env, "alias", "ls", "--user", "bob", check=True).stdout.splitlines()[1:] == []

    out = run_cli(env, "alias", "rm", "best", check=True).stdout
    assert f"removed alias best (was {second})" in out
    assert not os.path.lexists(link)
    assert resolve_alias(app.db.conn, USER, "best") is None
    assert resolve_alias(app.db.conn, USER, "other") is not None
    assert _types(app.db.conn)[-4:] == ["AliasSet", "AliasSet", "AliasSet", "AliasRemoved"]


def _hash(app: App, aid: str) -> str:
    row = app.db.conn.execute("SELECT hash FROM artifacts WHERE id = %s", (aid,)).fetchone()
    assert row is not None
    return str(row[0])


def test_unknown_refs_are_one_line_and_exit_1(conn: psycopg.Connection[Any], env: dict[str, str]) -> None:
    cases = {
        ("alias", "set", "x", "nothing"): "no artifact id or alias 'nothing'",
        ("alias", "set", "x", "artifact_ffff"): "no artifact 'artifact_ffff'",
        ("alias", "rm", "nothing"): "no alias 'nothing' for user alice",
        ("lineage", "nothing"): "no run, artifact or alias 'nothing'",
        ("lineage", "run_nope"): "no run 'run_nope'",
    }
    for args, message in cases.items():
        proc = run_cli(env, *args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert proc.stderr.strip().splitlines() == [f"labctl: error: {message}"], args
    assert _types(conn) == []


def test_an_alias_name_that_cannot_be_a_file_name_exits_2(app: App, env: dict[str, str]) -> None:
    _run(app.db.conn, "run_prep")
    aid = _output(app, "run_prep", {"a.txt": b"a"})
    proc = run_cli(env, "alias", "set", "../escape", aid)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert _types(app.db.conn)[-1] == "OutputLinked"


# ------------------------------------------------------------------ lineage


def _two_step_chain(app: App, tmp_path: Path) -> dict[str, str]:
    """external corpus -> run_prep -> dataset -> run_train -> model, plus run_eval reading the model."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    ext = external.register_external(app, alias="corpus", path=str(corpus)).artifact_id
    conn = app.db.conn
    _run(conn, "run_prep", inputs=[_input(ext, "raw"), InputRef(role="vocab", type="external", path="/v.txt")])
    data = _output(app, "run_prep", {"d.bin": b"data"}, alias="prepped")
    _run(conn, "run_train", inputs=[_input(data)])
    model = _output(app, "run_train", {"m.bin": b"model"}, kind="model")
    _run(conn, "run_eval", inputs=[_input(model, "model")], state=None)
    return {"ext": ext, "data": data, "model": model}


def test_lineage_of_the_middle_artifact_shows_its_producer_chain_and_its_consumers(
    app: App, env: dict[str, str], tmp_path: Path
) -> None:
    ids = _two_step_chain(app, tmp_path)
    text = run_cli(env, "lineage", "prepped", check=True).stdout
    assert text.splitlines() == [
        f"{ids['data']}  dataset prepped",
        "upstream (what it came from):",
        "└── run_prep  prep [succeeded] alice",
        f"    ├── {ids['ext']}  external corpus",
        "    └── /v.txt  external input",
        "downstream (what came of it):",
        "└── run_train  train [succeeded] alice",
        f"    └── {ids['model']}  model",
        "        └── run_eval  eval [submitted] alice",
    ]
    tree = json.loads(run_cli(env, "lineage", ids["data"], "--json", check=True).stdout)
    assert tree["root"]["id"] == ids["data"]
    assert [n["id"] for n in tree["upstream"]] == ["run_prep"]
    assert [n["id"] for n in tree["upstream"][0]["children"]] == [ids["ext"], "/v.txt"]
    assert tree["downstream"][0]["children"][0]["children"][0]["id"] == "run_eval"


def test_lineage_of_a_run_follows_inputs_up_and_outputs_down_within_the_depth(app: App, tmp_path: Path) -> None:
    ids = _two_step_chain(app, tmp_path)
    result = lineage.lineage(app.db.conn, USER, "run_train")
    assert [n.id for n in result.upstream] == [ids["data"]]
    assert [n.id for n in result.upstream[0].children] == ["run_prep"]
    assert [n.id for n in result.downstream] == [ids["model"]]
    shallow = lineage.lineage(app.db.conn, USER, "run_train", depth=1)
    assert [(n.id, n.children) for n in shallow.upstream] == [(ids["data"], [])]


def test_lineage_stops_on_a_cycle_of_identical_content(app: App) -> None:
    _run(app.db.conn, "run_a")
    aid = _output(app, "run_a", {"same": b"same"})
    _run(app.db.conn, "run_copy", inputs=[_input(aid)])
    projections.record(
        app.db.conn,
        [NewEvent("run-run_copy", OutputLinked(run_id="run_copy", role="out", artifact_id=aid, path="/same"))],
    )
    result = lineage.lineage(app.db.conn, USER, aid, depth=50)
    lines = list(lineage.render_lineage(result))
    assert len(lines) < 20 and any("(see above)" in line for line in lines)


# ----------------------------------------------------------------------- gc


def _gc_world(app: App, tmp_path: Path) -> dict[str, str]:
    conn = app.db.conn
    key = "k" * 64
    projections.record(conn, [NewEvent(cache.stream_of(key), CacheClaimed(cache_key=key, run_id="run_old"), 0)])
    _run(conn, "run_old", cache_key=key)
    projections.record(
        conn, [NewEvent(cache.stream_of(key), CacheReleased(cache_key=key, run_id="run_old", succeeded=True))]
    )
    world = {
        "unreferenced": _output(app, "run_old", {"w.bin": b"w" * 1000}),
        "aliased": _output(app, "run_old", {"a.bin": b"a"}, alias="keep"),
        "needed": _output(app, "run_old", {"n.bin": b"n"}),
        "key": key,
    }
    _run(conn, "run_waiting", inputs=[_input(world["needed"])], state=None)  # not finished: still needs it
    ext_dir = tmp_path / "external_data"
    ext_dir.mkdir()
    (ext_dir / "big.bin").write_bytes(b"e" * 100)
    world["external"] = external.register_external(app, alias="ext", path=str(ext_dir)).artifact_id
    projections.record(conn, [NewEvent(f"alias-{USER}/ext", AliasRemoved(user=USER, alias="ext"))])
    return world


def _object(app: App, aid: str) -> Path:
    return object_dir(_root(app, "dataset"), _hash(app, aid))


def test_gc_dry_run_lists_only_the_unreferenced_old_artifact_and_removes_nothing(
    app: App, env: dict[str, str], tmp_path: Path
) -> None:
    world = _gc_world(app, tmp_path)
    before = _types(app.db.conn)
    size = gc.tree_size(_object(app, world["unreferenced"]))  # its bytes and its .meta.json
    assert size > 1000
    out = run_cli(env, "gc", "--older-than", "0s", "--force", check=True).stdout.splitlines()
    assert [line.split()[0] for line in out[:-1]] == [world["unreferenced"]]
    assert out[-1].startswith("would remove 1 artifact, freeing ") and f"({size:,} bytes)" in out[-1]
    assert _object(app, world["unreferenced"]).is_dir()
    assert _types(app.db.conn) == before
    young = run_cli(env, "gc", check=True).stdout.splitlines()  # default: older than 30 days
    assert young == ["would remove 0 artifacts, freeing 0 B (0 bytes) (dry run: pass --yes to remove)"]


def test_gc_yes_removes_only_the_unreferenced_bytes_and_records_the_collection(
    app: App, env: dict[str, str], tmp_path: Path
) -> None:
    world = _gc_world(app, tmp_path)
    size = gc.tree_size(_object(app, world["unreferenced"]))
    out = run_cli(env, "gc", "--older-than", "0s", "--force", "--yes", check=True).stdout.splitlines()
    assert out[0].split()[0] == world["unreferenced"]
    assert f"removed 1 artifact, freed {gc.human_bytes(size)} ({size:,} bytes)" in out
    assert "invalidated 1 cache entry: identical runs will recompute" in out
    assert not _object(app, world["unreferenced"]).exists()
    assert _object(app, world["aliased"]).is_dir()
    assert _object(app, world["needed"]).is_dir()
    assert (tmp_path / "external_data" / "big.bin").read_bytes() == b"e" * 100

    conn = app.db.conn
    collected = conn.execute(
        "SELECT data, meta->>'actor' FROM events WHERE type = 'ArtifactsCollected' ORDER BY position"
    ).fetchall()
    assert len(collected) == 1
    assert collected[0][0]["artifact_ids"] == [world["unreferenced"]]
    assert collected[0][0]["actor"] == USER and collected[0][1] == USER and collected[0][0]["reason"]
    assert cache.load(conn, world["key"]).state == "free"  # the next identical run computes again
    assert resolve_alias(conn, USER, world["unreferenced"]) is None
    assert [a.id for a in artifact_queries.list_artifacts(conn, include_removed=False)] == [
        world["aliased"],
        world["needed"],
        world["external"],
    ]
    again = run_cli(env, "gc", "--older-than", "0s", "--force", "--yes", check=True).stdout.splitlines()
    assert again == ["removed 0 artifacts, freed 0 B (0 bytes)"]


def test_gc_collects_a_needed_artifact_once_its_reader_ends_but_never_an_aliased_one(app: App, tmp_path: Path) -> None:
    world = _gc_world(app, tmp_path)
    later = datetime.now(UTC) + timedelta(days=31)
    dry = gc.gc(app, older_than=timedelta(days=30), remove=False, now=later)
    assert [c.artifact_id for c in dry.artifacts] == [world["unreferenced"]]
    projections.record(
        app.db.conn, [NewEvent("run-run_waiting", RunFinished(run_id="run_waiting", state="failed", exit_code=1))]
    )
    sizes = [gc.tree_size(_object(app, world[k])) for k in ("unreferenced", "needed")]
    report = gc.gc(app, older_than=timedelta(days=30), remove=True, now=later)
    assert sorted(c.artifact_id for c in report.artifacts) == sorted([world["unreferenced"], world["needed"]])
    assert report.bytes_freed == sum(sizes)
    assert _object(app, world["aliased"]).is_dir()
    assert not _object(app, world["needed"]).exists()


def test_gc_never_collects_an_output_of_a_pipeline_that_is_still_running(app: App) -> None:
    conn = app.db.conn
    for run_id, state in (("run_s1", "succeeded"), ("run_s2", None)):
        submitted = RunSubmitted(
            run_id=run_id,
            name=run_id,
            user=USER,
            executor="local",
            run_dir="/r",
            recipe={},
            pipeline_id="pipeline_x",
            stage_name=run_id,
        )
        projections.record(conn, [NewEvent(f"run-{run_id}", submitted, 0)])
        if state:
            projections.record(conn, [NewEvent(f"run-{run_id}", RunFinished(run_id=run_id, state=state))])
    _output(app, "run_s1", {"x": b"x"})
    assert gc.gc(app, older_than=timedelta(0), remove=False, force=True).artifacts == []


def test_gc_rejects_a_malformed_age(env: dict[str, str]) -> None:
    proc = run_cli(env, "gc", "--older-than", "soon")
    assert proc.returncode == 2
    assert "bad age 'soon'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_resolving_a_collected_artifact_by_id_says_its_bytes_are_gone(app: App, tmp_path: Path) -> None:
    world = _gc_world(app, tmp_path)
    gc.gc(app, older_than=timedelta(0), remove=True, force=True)
    with pytest.raises(UserError, match="collected by gc"):
        aliases.set_alias(app, "revive", world["unreferenced"])
