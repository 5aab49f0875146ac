"""Bringing an original (Rust) labctl registry into the event log: `labctl import`."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from labctl.db import connect, ensure_schema
from tests.conftest import _with_dbname, labctl_bin, run_cli, wait_for
from tests.original.ddl import VERSIONS
from tests.original.seed import PREP_TOML, Seeded, Seeder, seed_registry


def _public_tables(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as c:
        return c.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
        ).fetchall()


def test_a_database_holding_only_an_original_registry_says_to_import_it(
    original_url: str, labctl_env: dict[str, str]
) -> None:
    env = {**labctl_env, "LABCTL_DATABASE_URL": original_url}
    before = _public_tables(original_url)
    proc = run_cli(env, "status")
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "labctl import" in lines[0] and "original labctl registry" in lines[0]
    with psycopg.connect(original_url) as c:
        assert c.execute("SELECT to_regnamespace('labctl')").fetchone() == (None,)
    assert _public_tables(original_url) == before


def test_labctl_shares_a_database_with_an_original_registry_without_touching_it(
    original_url: str, labctl_env: dict[str, str]
) -> None:
    before = _public_tables(original_url)
    with connect(original_url) as c:
        ensure_schema(c, beside_original=True)
    env = {**labctl_env, "LABCTL_DATABASE_URL": original_url, "LABCTL_USER": "alice"}
    run_cli(env, "register-external", "--alias", "ds", "--path", "/tmp", check=True)
    assert "ds" in run_cli(env, "alias", "ls", check=True).stdout
    assert _public_tables(original_url) == before
    with psycopg.connect(original_url) as c:
        assert c.execute("SELECT count(*) FROM public.events").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM labctl.events").fetchone()[0] > 0  # type: ignore[index]


# ------------------------------------------------------------ a full import


def _fresh_db(server_url: str, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return _with_dbname(server_url, name)


@pytest.fixture
def registry(server_url: str, tmp_path: Path) -> Iterator[Callable[[str], tuple[str, Seeded]]]:
    """``make(version)``: a separate database holding a seeded original registry of that version."""
    made: list[str] = []

    def make(version: str, **sizes: int) -> tuple[str, Seeded]:
        url = _fresh_db(server_url, "labctl_src")
        made.append(url)
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(VERSIONS[version].encode())
            seeded = seed_registry(c, version, tmp_path / f"store-{version}", **sizes)
        return url, seeded

    yield make
    with psycopg.connect(server_url, autocommit=True) as admin:
        for url in made:
            admin.execute(f"DROP DATABASE IF EXISTS {conninfo_to_dict(url)['dbname']} WITH (FORCE)")


def _epoch(value: str | None) -> int | None:
    return None if value is None else int(datetime.fromisoformat(value).timestamp())


def _source(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as c:
        return c.execute(query).fetchall()


@pytest.mark.parametrize("version", list(VERSIONS))
def test_every_field_of_an_original_registry_is_imported(
    version: str, registry: Any, env: dict[str, str], db_url: str
) -> None:
    src, seeded = registry(version)
    out = run_cli(env, "import", "--from", src, check=True).stdout
    assert "runs" in out and "Traceback" not in out

    # Runs: `status --all --json` agrees with the original's rows field by field.
    lines = run_cli(env, "status", "--all", "--json", check=True).stdout.splitlines()
    ours = {r["id"]: r for r in map(json.loads, lines)}
    theirs = _source(
        src,
        "SELECT id, recipe_name, status, submitted_by, job_id, created_at, finished_at, cache_key, pipeline_id, "
        "stage_name FROM runs",
    )
    assert set(ours) == {r[0] for r in theirs} == set(seeded.run_ids)
    for rid, name, status, user, job, created, finished, key, pipeline, stage in theirs:
        r = ours[rid]
        assert (r["name"], r["status"], r["user"], r["job_id"]) == (name, status, user, job)
        assert (_epoch(r["created_at"]), _epoch(r["finished_at"])) == (created, finished)
        assert (r["cache_key"], r["pipeline_id"], r["stage_name"]) == (key, pipeline, stage)

    # `show`: the recipe, context, provenance, tracking, inputs and outputs of a trained run.
    train = seeded.succeeded_train[0]
    shown = json.loads(run_cli(env, "show", train, check=True).stdout)
    recipe, context, recipe_hash, source_path, dep = _source(
        src, f"SELECT recipe_json, context_json, recipe_hash, source_path, dependency_on FROM runs WHERE id = '{train}'"
    )[0]
    assert shown["recipe"] == recipe
    assert shown["original"]["context"] == context
    assert (shown["original"]["recipe_hash"], shown["original"]["source_path"]) == (recipe_hash, source_path)
    assert shown["original"]["dependency_on"] == dep
    assert shown["original"]["tracking"]["url"] == f"https://wandb.ai/lab/pretrain/runs/{train}"
    n_events = _source(src, f"SELECT count(*) FROM events WHERE run_id = '{train}'")[0][0]
    assert shown["original"]["original_events"] == n_events
    inputs = _source(src, f"SELECT role, artifact_id, resolved_path FROM run_inputs WHERE run_id = '{train}'")
    assert [(i["role"], i["artifact_id"], i["path"]) for i in shown["inputs"]] == inputs
    assert shown["inputs"][0]["alias"] == recipe["inputs"]["data"]["artifact"]
    outputs = _source(src, f"SELECT role, artifact_id FROM run_outputs WHERE run_id = '{train}' ORDER BY 2")
    assert sorted((o["role"], o["artifact_id"]) for o in shown["outputs"]) == outputs
    assert [o["step"] for o in shown["outputs"]] == [1000, 2000, 3000]

    # Artifacts: id, kind, path, producer, user, metadata, created.
    arts = {
        a["id"]: a
        for a in map(json.loads, run_cli(env, "artifacts", "--json", "--limit", "0", check=True).stdout.splitlines())
    }
    theirs_a = _source(src, 'SELECT id, kind, path, producer_run_id, "user", metadata_json, created_at FROM artifacts')
    assert set(arts) == {a[0] for a in theirs_a}
    with connect(db_url) as c:
        rows = {r[0]: r[1:] for r in c.execute("SELECT id, user_name, metadata, created_at, hash FROM artifacts")}
        for aid, kind, path, producer, user, metadata, created in theirs_a:
            assert (arts[aid]["kind"], arts[aid]["path"], arts[aid]["producer_run_id"]) == (kind, path, producer)
            assert rows[aid][:2] == (user, metadata)
            assert int(rows[aid][2].timestamp()) == created
        if version == "eb54594":
            hashes = dict(_source(src, "SELECT id, content_hash FROM artifacts"))
            assert {aid: r[3] for aid, r in rows.items()} == hashes
            integrity = dict(c.execute("SELECT artifact_id, integrity FROM imported_artifacts").fetchall())
            assert [a for a, i in integrity.items() if i != "verified"] == seeded.corrupted
        else:
            assert all(aid == "artifact_" + r[3][:16] for aid, r in rows.items())  # path-derived ids stay valid

        # Aliases: every global alias resolves to the same artifact, as the original's did.
        from labctl.lookup import alias_target

        for alias, artifact_id, _ in _source(src, "SELECT alias, artifact_id, created_at FROM artifact_aliases"):
            assert alias_target(c, alias) == artifact_id
        if version == "eb54594":
            for user, alias, _kind, artifact_id in _source(
                src, 'SELECT "user", alias, kind, artifact_id FROM artifact_user_aliases'
            ):
                assert alias_target(c, f"{user}/{alias}") == artifact_id

        # Evals: every request, its run, attempts and the metrics its eval run recorded.
        from labctl.evals import eval_rows

        evals = {r.checkpoint: r for r in eval_rows(c)}
        theirs_e = _source(src, "SELECT checkpoint_artifact_id, policy_id, eval_run_id, attempts FROM eval_requests")
        assert len(evals) == len(theirs_e) > 0
        attempts = dict(
            c.execute(
                "SELECT e.checkpoint_artifact_id, i.attempts FROM evals e JOIN imported_evals i USING (eval_key)"
            ).fetchall()
        )
        for ckpt, policy, run_id, n in theirs_e:
            assert (evals[ckpt].policy, evals[ckpt].eval_run, evals[ckpt].state) == (policy, run_id, "succeeded")
            assert evals[ckpt].step in (1000, 2000, 3000) and set(evals[ckpt].metrics or {}) == {"accuracy", "loss"}
            assert attempts[ckpt] == n

        # Pipelines, stages and their parents; users.
        pipes = dict(c.execute("SELECT id, name FROM pipelines").fetchall())
        assert pipes == dict(_source(src, "SELECT id, name FROM pipelines"))
        stages = c.execute(
            "SELECT stage_name, parents FROM pipeline_stages WHERE pipeline_id = %s ORDER BY ordinal",
            (shown["pipeline_id"],),
        ).fetchall()
        assert stages == [("train", []), ("eval", ["train"])]
        assert {r[0] for r in c.execute("SELECT name FROM users")} == set(seeded.users)

    # Lineage: a checkpoint came from its training run, which read the dataset.
    ckpt = shown["outputs"][0]["artifact_id"]
    tree = json.loads(run_cli(env, "lineage", ckpt, "--json", check=True).stdout)
    assert train in json.dumps(tree["upstream"]) and shown["inputs"][0]["artifact_id"] in json.dumps(tree["upstream"])

    assert run_cli(env, "audit", "verify").returncode == 0


def _log_size(db_url: str) -> int:
    with connect(db_url) as c:
        return int(c.execute("SELECT count(*) FROM events").fetchone()[0])  # type: ignore[index]


def test_importing_again_appends_nothing_and_dry_run_writes_nothing(
    registry: Any, env: dict[str, str], db_url: str
) -> None:
    src, _ = registry("0003")
    dry = run_cli(env, "import", "--from", src, "--dry-run", check=True).stdout
    assert "would import" in dry and _log_size(db_url) == 0
    run_cli(env, "import", "--from", src, check=True)
    size = _log_size(db_url)
    again = run_cli(env, "import", "--from", src, "--json", check=True).stdout
    report = json.loads(again)
    assert report["events_appended"] == 0 and _log_size(db_url) == size
    assert all(k["new"] == 0 and k["changed"] == 0 for k in report["kinds"].values())


def test_an_import_killed_midway_then_run_again_ends_as_one_clean_import(
    registry: Any, env: dict[str, str], db_url: str, server_url: str, labctl_env: dict[str, str]
) -> None:
    src, _ = registry("eb54594", users=8)
    proc = subprocess.Popen(
        [*labctl_bin(), "import", "--from", src, "--batch", "20"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: _log_size(db_url) > 0, "the first batch", timeout=60)
    proc.kill()
    proc.wait()
    partial = _log_size(db_url)
    run_cli(env, "import", "--from", src, check=True)

    clean_url = _fresh_db(server_url, "labctl_clean")
    try:
        clean_env = {**env, "LABCTL_DATABASE_URL": clean_url}
        run_cli(clean_env, "import", "--from", src, check=True)
        assert 0 < partial < _log_size(clean_url) == _log_size(db_url)
        assert _read_models(db_url) == _read_models(clean_url)
        assert _cache_entries(db_url) == _cache_entries(clean_url)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {conninfo_to_dict(clean_url)['dbname']} WITH (FORCE)")
    assert run_cli(env, "audit", "verify").returncode == 0


class _Stop(Exception):
    pass


@pytest.mark.parametrize("bulk", [False, True], ids=["projecting-each-batch", "bulk-then-rebuild"])
def test_an_import_stopped_after_any_batch_then_run_again_ends_as_one_clean_import(
    registry: Any, server_url: str, bulk: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every batch boundary, not only the one a kill happens to land on, is a safe place to die.

    In bulk (a big import: batches appended without projecting, read models rebuilt once at the end)
    that includes the last boundary: everything appended, nothing projected yet; the re-run rebuilds.
    """
    import projections.engine
    from labctl.importer import import_registry

    # Bulk is chosen by size: make this small registry big enough for it (or never, for the other case).
    monkeypatch.setattr(projections.engine, "REBUILD_FROM", 1 if bulk else 10**9)

    src, _ = registry("eb54594", users=2)
    stores: list[Path] = []
    made: list[str] = []

    def fresh() -> str:
        made.append(_fresh_db(server_url, "labctl_cut"))
        return made[-1]

    try:
        clean = fresh()
        boundaries: list[int] = []
        first = import_registry(clean, src, actor="t", stores=stores, batch_events=40, on_batch=boundaries.append)
        assert first.rebuilt_read_models == bulk
        want_size, want_models, want_cache = _log_size(clean), _read_models(clean), _cache_entries(clean)
        assert len(boundaries) >= 5
        # Cache entries come after every run, in batches of their own: some stops fall between a run and its entry.
        assert want_cache

        for cut in range(1, len(boundaries) + 1):
            url = fresh()

            def stop(done: int, cut: int = cut) -> None:
                if done == boundaries[cut - 1]:
                    raise _Stop

            with pytest.raises(_Stop):
                import_registry(url, src, actor="t", stores=stores, batch_events=40, on_batch=stop)
            assert _log_size(url) == boundaries[cut - 1]
            again = import_registry(url, src, actor="t", stores=stores, batch_events=40)
            assert again.rebuilt_read_models == bulk
            assert (_log_size(url), _read_models(url)) == (want_size, want_models), f"stopped after batch {cut}"
            assert _cache_entries(url) == want_cache, f"stopped after batch {cut}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            for url in made:
                admin.execute(f"DROP DATABASE IF EXISTS {conninfo_to_dict(url)['dbname']} WITH (FORCE)")


def _cache_entries(url: str) -> list[tuple[Any, ...]]:
    """Every cache key's stream: which run produced it (what a resubmitted recipe hits)."""
    with connect(url) as c:
        return c.execute(
            "SELECT stream, version, type, data ->> 'run_id' FROM events WHERE stream LIKE 'cache-%' ORDER BY 1, 2"
        ).fetchall()


def _read_models(url: str) -> dict[str, list[tuple[Any, ...]]]:
    tables = ["runs", "run_inputs", "run_outputs", "artifacts", "aliases", "pipelines", "pipeline_stages", "evals"]
    tables += ["imported_runs", "users", "imported_evals", "imported_artifacts"]
    drop = {"updated_at", "stream_version"}  # when the import recorded them, not what it recorded
    out = {}
    with connect(url) as c:
        for t in tables:
            cols = [
                r[0]
                for r in c.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = 'live' AND table_name = %s ORDER BY ordinal_position",
                    (t,),
                ).fetchall()
                if r[0] not in drop
            ]
            rows = c.execute(f"SELECT {', '.join(cols)} FROM {t}").fetchall()
            out[t] = sorted(rows, key=repr)
    return out


def test_a_second_import_brings_new_runs_and_status_changes(registry: Any, env: dict[str, str], db_url: str) -> None:
    src, _ = registry("0003")
    run_cli(env, "import", "--from", src, check=True)
    running = _source(src, "SELECT id FROM runs WHERE status = 'running' ORDER BY id")[0][0]
    with psycopg.connect(src, autocommit=True) as c:
        with c.transaction():
            c.execute("UPDATE runs SET status = 'succeeded', finished_at = created_at + 100 WHERE id = %s", (running,))
            c.execute(
                "INSERT INTO events (run_id, event_type, payload_json, created_at) "
                "VALUES (%s, 'run_status', '{\"status\": \"succeeded\"}', 1800000000)",
                (running,),
            )
        new_ids = _add_runs(c, src)
    report = json.loads(run_cli(env, "import", "--from", src, "--json", check=True).stdout)
    assert report["kinds"]["runs"]["new"] == len(new_ids)
    assert report["kinds"]["runs"]["changed"] == 1
    lines = run_cli(env, "status", "--all", "--json", check=True).stdout.splitlines()
    ours = {r["id"]: r for r in map(json.loads, lines)}
    assert ours[running]["status"] == "succeeded"
    assert set(new_ids) <= set(ours)
    shown = json.loads(run_cli(env, "show", running, check=True).stdout)
    assert (
        shown["original"]["original_events"]
        == _source(src, f"SELECT count(*) FROM events WHERE run_id = '{running}'")[0][0]
    )
    assert json.loads(run_cli(env, "import", "--from", src, "--json", check=True).stdout)["events_appended"] == 0
    assert run_cli(env, "audit", "verify").returncode == 0


def _add_runs(c: psycopg.Connection[Any], src: str) -> list[str]:
    """Seed a few more runs (two newcomers' pipelines) into the original registry; their ids."""
    more = Seeder("0003", Path(seeded_root(src)), seed=99)
    more.n = 10_000  # ids that do not clash with the first seeding
    more.clock += 10_000_000
    more.job += 1_000_000
    more.rows.tables.clear()
    more.seed(users=2, pipelines_per_user=1, sweeps_per_user=0, user_prefix="newcomer")
    more.write(c)
    return list(more.out.run_ids)


def test_a_bulk_import_then_a_few_new_runs_are_projected_batch_by_batch(
    registry: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big first import rebuilds the read models once; importing a few new runs later must not replay the log."""
    import projections.engine
    from labctl.importer import import_registry

    monkeypatch.setattr(projections.engine, "REBUILD_FROM", 1)  # this small registry counts as big
    src, seeded = registry("0003")
    first = import_registry(db_url, src, actor="t")
    assert first.rebuilt_read_models and first.events_appended > 0
    with connect(db_url) as c:
        assert projections.checkpoint(c) == _log_size(db_url)  # the rebuild left nothing unprojected
        assert {r[0] for r in c.execute("SELECT id FROM runs")} == set(seeded.run_ids)
    with psycopg.connect(src, autocommit=True) as c:
        new_ids = _add_runs(c, src)
    second = import_registry(db_url, src, actor="t")
    assert not second.rebuilt_read_models and 0 < second.events_appended < first.events_appended / 4
    with connect(db_url) as c:
        assert {r[0] for r in c.execute("SELECT id FROM runs")} == set(seeded.run_ids) | set(new_ids)
        assert projections.checkpoint(c) == _log_size(db_url)
    assert import_registry(db_url, src, actor="t").events_appended == 0


def seeded_root(src: str) -> str:
    """Where the first seeding put the store (read back from an artifact's path)."""
    path = _source(src, "SELECT path FROM artifacts LIMIT 1")[0][0]
    return path.split("/artifacts/")[0]


def test_a_recipe_that_succeeded_before_the_switch_is_a_cache_hit_when_resubmitted(
    registry: Any, env: dict[str, str], tmp_path: Path
) -> None:
    src, seeded = registry("0003", users=2, pipelines_per_user=1, sweeps_per_user=0)
    run_cli(env, "import", "--from", src, check=True)
    recipe = tmp_path / "prep.toml"
    recipe.write_text(PREP_TOML)
    user_env = {**env, "LABCTL_USER": seeded.users[1]}
    out = run_cli(user_env, "run", str(recipe), check=True).stdout
    run_id = next(line.split()[-1] for line in out.splitlines() if line.startswith("run_id:"))
    shown = json.loads(run_cli(user_env, "show", run_id, check=True).stdout)
    assert shown["status"] == "cache_hit"
    assert shown["producer_run_id"] == seeded.prep_runs[1]  # the latest success of that recipe


def test_checkpoints_the_original_evaluated_are_not_evaluated_again(
    registry: Any, db_url: str, env: dict[str, str]
) -> None:
    from labctl.evals import unevaluated
    from labctl.files.policy import AppliesTo, EvalPolicy

    src, _ = registry("0001", users=2, pipelines_per_user=2, sweeps_per_user=0)
    run_cli(env, "import", "--from", src, check=True)
    evaluated = {r[0] for r in _source(src, "SELECT checkpoint_artifact_id FROM eval_requests")}
    assert evaluated
    policy = EvalPolicy(name="per_ckpt", recipe="/x/eval.toml", applies_to=AppliesTo(type="checkpoint"))
    other = EvalPolicy(name="another", recipe="/x/eval.toml", applies_to=AppliesTo(type="checkpoint"))
    with connect(db_url) as c:
        assert {ck.id for ck in unevaluated(c, policy, "0" * 64, None)} & evaluated == set()
        assert {ck.id for ck in unevaluated(c, other, "0" * 64, None)} >= evaluated
