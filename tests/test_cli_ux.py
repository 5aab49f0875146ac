"""A user finds their way: filters that can match nothing are refused, pages say there is more,
pipelines take --set and --no-cache, and a repeated cache hit adds no alias events."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import REPO, USER, run_cli
from tests.test_pipelines_acceptance import DATA, event_count, run_pipeline, status_of

QUICK = REPO / "tests" / "data" / "recipes" / "quick.toml"
FIXED = REPO / "tests" / "data" / "recipes" / "fixed_alias.toml"


def one_line_error(proc: Any) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["status", "--state", "finished"], ["succeeded", "failed", "cache_hit", "created"]),
        (["artifacts", "--kind", "chekpoint"], ["checkpoint", "dataset"]),
        (["eval", "ls", "--policy", "nope"], []),
    ],
)
def test_a_filter_value_that_can_match_nothing_is_refused_with_the_valid_ones(
    conn: psycopg.Connection[Any], env: dict[str, str], args: list[str], named: list[str]
) -> None:
    before = event_count(conn)
    proc = run_cli(env, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_line_error(proc)
    assert f"{args[-1]!r}" in line and "expected one of" in line, line
    for valid in named:
        assert valid in line, line
    assert proc.stdout == ""
    assert event_count(conn) == before


def test_events_says_how_to_read_the_next_page(conn: psycopg.Connection[Any], env: dict[str, str]) -> None:
    for i in range(3):
        run_cli(env, "run", str(QUICK), "--set", f"params.i={i}", check=True)
    total = event_count(conn)
    assert total > 4
    page = run_cli(env, "events", "--limit", "4", "--json", check=True)
    positions = [json.loads(line)["position"] for line in page.stdout.splitlines()]
    assert len(positions) == 4
    assert f"more: --after {positions[-1]}" in page.stderr
    rest = run_cli(env, "events", "--after", str(positions[-1]), "--limit", str(total), check=True)
    assert "more:" not in rest.stderr


def test_run_pipeline_takes_set_per_stage_and_no_cache(conn: psycopg.Connection[Any], env: dict[str, str]) -> None:
    pipeline = DATA / "diamond" / "pipeline.toml"
    first = run_pipeline(env, pipeline, "--wait")
    second = run_pipeline(env, pipeline, "--set", "a:params.tag=x", "--wait")
    a_recipe = conn.execute("SELECT recipe FROM runs WHERE id = %s", (second.run("a"),)).fetchone()
    b_recipe = conn.execute("SELECT recipe FROM runs WHERE id = %s", (second.run("b"),)).fetchone()
    assert a_recipe and a_recipe[0]["params"] == {"tag": "x"}
    assert b_recipe and "params" not in b_recipe[0]
    # a changed, so it ran; its bytes are the same, so the stages below it are cache hits
    assert status_of(conn, second.run("a")) == "succeeded"
    assert status_of(conn, second.run("d")) == "cache_hit"
    forced = run_pipeline(env, pipeline, "--no-cache", "--wait")
    assert {status_of(conn, forced.run(s)) for s in "abcd"} == {"succeeded"}
    assert first.pipeline_id != forced.pipeline_id


@pytest.mark.parametrize("assignment", ["params.nope=1", "zz:params.x=1", "a:nope.x=1"])
def test_a_pipeline_set_that_changes_nothing_is_refused_with_nothing_appended(
    conn: psycopg.Connection[Any], env: dict[str, str], assignment: str
) -> None:
    before = event_count(conn)
    proc = run_cli(env, "run-pipeline", str(DATA / "diamond" / "pipeline.toml"), "--set", assignment)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--set" in one_line_error(proc)
    assert event_count(conn) == before


def test_a_repeated_cache_hit_adds_no_alias_event(conn: psycopg.Connection[Any], env: dict[str, str]) -> None:
    ids = [
        re.search(r"^run_id: (\S+)$", run_cli(env, "run", str(FIXED), "--wait", check=True).stdout, re.M)
        for _ in range(3)
    ]
    assert all(ids)
    statuses = [status_of(conn, m.group(1)) for m in ids if m]
    assert statuses == ["succeeded", "cache_hit", "cache_hit"]
    row = conn.execute(
        "SELECT count(*) FROM events WHERE stream = %s AND type = 'AliasSet'", (f"alias-{USER}/fixed-output",)
    ).fetchone()
    assert row and row[0] == 1


def test_show_takes_artifact_and_pipeline_ids_and_an_empty_id_is_refused(
    conn: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    submitted = run_pipeline(env, DATA / "diamond" / "pipeline.toml", "--wait")
    pipeline = json.loads(run_cli(env, "show", submitted.pipeline_id, check=True).stdout)
    assert pipeline["id"] == submitted.pipeline_id and pipeline["status"] == "succeeded"
    row = conn.execute("SELECT artifact_id FROM run_outputs WHERE run_id = %s", (submitted.run("a"),)).fetchone()
    assert row is not None
    artifact = json.loads(run_cli(env, "show", row[0], check=True).stdout)
    assert artifact["id"] == row[0] and artifact["producer_run_id"] == submitted.run("a")
    assert set(artifact["consumers"]) == {submitted.run("b"), submitted.run("c")}
    proc = run_cli(env, "show", "")
    assert proc.returncode == 2 and "empty" in one_line_error(proc)


def test_show_of_an_eval_result_prints_its_result(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    recipe = tmp_path / "score.toml"
    recipe.write_text(
        'name = "score"\n'
        """command = ["bash", "-c", 'mkdir -p "$1" && echo "{\\"accuracy\\": 0.93}" > "$1/metrics.json"', "s", """
        '"{outputs.m.path}"]\n'
        '[outputs.m]\ntype = "eval_result"\nmarker = "metrics.json"\nalias = "score-{run.id}"\n'
    )
    run_id = re.search(r"^run_id: (\S+)$", run_cli(env, "run", str(recipe), "--wait", check=True).stdout, re.M)
    assert run_id
    row = conn.execute("SELECT artifact_id FROM run_outputs WHERE run_id = %s", (run_id.group(1),)).fetchone()
    assert row is not None
    shown = json.loads(run_cli(env, "show", row[0], check=True).stdout)
    assert shown["result"] == {"accuracy": 0.93}


def test_a_cancelled_pipeline_ends_cancelled_not_failed(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        f'name = "stopme"\n[stages.nap]\nrecipe = "{REPO / "tests" / "data" / "recipes" / "sleep.toml"}"\n'
    )
    submitted = run_pipeline(env, pipeline)  # no agent: the stage stays queued
    run_cli(env, "cancel", submitted.pipeline_id, check=True)
    run_cli(env, "agent", "--drain", check=True, timeout=120)  # the advancer closes the pipeline
    view = json.loads(run_cli(env, "pipeline-show", submitted.pipeline_id, "--json", check=True).stdout)
    assert view["status"] == "cancelled"
    assert status_of(conn, submitted.run("nap")) == "cancelled"


def test_shell_completion_is_offered(env: dict[str, str]) -> None:
    proc = run_cli(env, "--show-completion", "bash", check=True)
    assert "_LABCTL_COMPLETE" in proc.stdout
    assert "--install-completion" in run_cli(env, "--help", check=True).stdout


def test_hash_outputs_on_a_finished_run_keeps_the_hashes_registration_used(
    conn: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    out = run_cli(env, "run", str(REPO / "examples" / "ml" / "recipes" / "hello.toml"), "--wait", check=True).stdout
    found = re.search(r"^run_dir: (\S+)$", out, re.M)
    assert found
    manifest = Path(found.group(1)) / ".lab" / "output_hashes.json"
    before = manifest.read_bytes()
    proc = run_cli(env, "hash-outputs", "--run-dir", found.group(1))
    assert proc.returncode == 1 and "hashed already" in one_line_error(proc)
    assert manifest.read_bytes() == before


def _nodes(tree: list[dict[str, Any]]) -> set[str]:
    return {n["id"] for n in tree} | {i for n in tree for i in _nodes(n.get("children", []))}


def test_lineage_follows_a_sweep_into_its_aggregate_both_ways(env: dict[str, str]) -> None:
    out = run_cli(env, "run-sweep", str(DATA / "sweep" / "point.toml"), "--wait", check=True, timeout=300).stdout
    aggregate = re.search(r"^aggregate_run_id: (\S+)$", out, re.M)
    points_line = re.search(r"^stage sweep-point: (.+)$", out, re.M)
    assert aggregate and points_line
    points = set(points_line.group(1).split(", "))
    up = json.loads(run_cli(env, "lineage", aggregate.group(1), "--json", check=True).stdout)["upstream"]
    assert points <= _nodes(up), up
    first = sorted(points)[0]
    down = json.loads(run_cli(env, "lineage", first, "--json", check=True).stdout)["downstream"]
    assert aggregate.group(1) in _nodes(down), down
