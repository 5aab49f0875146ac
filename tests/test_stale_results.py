"""No stale cache hits: the key covers what a run reads, a run that skipped its marker is not reused,
and a hit says what it reused (real Postgres, real `labctl` processes)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import psycopg

from labctl.db import Database
from labctl.fingerprints import fingerprint, tree_stat
from tests.conftest import REPO, run_cli

RECIPES = REPO / "tests" / "data" / "recipes"


def printed(stdout: str, key: str) -> str:
    found = re.search(rf"^{key}: (\S+)", stdout, re.MULTILINE)
    assert found, f"no '{key}:' line in:\n{stdout}"
    return found.group(1)


def run_wait(env: dict[str, str], recipe: Path, *args: str) -> tuple[str, str, str]:
    """`labctl run RECIPE --wait`: (run id, status line value, whole stdout)."""
    proc = run_cli(env, "run", str(recipe), "--wait", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return printed(proc.stdout, "run_id"), printed(proc.stdout, "status"), proc.stdout


def settle(path: Path) -> None:
    """Move mtimes out of the 'racily clean' window, so a stored hash may be reused."""
    old = time.time() - 60
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (old, old))


def reads_external_recipe(directory: Path, data: Path) -> Path:
    recipe = directory / "reads.toml"
    recipe.write_text(
        'name = "reads-data"\n'
        'command = ["bash", "-c", \'mkdir -p "$2" && cat "$1"/*.csv | wc -c > "$2/size.txt"\', "x", '
        '"{inputs.data.path}", "{outputs.out.path}"]\n'
        f'[inputs.data]\ntype = "external"\npath = "{data}"\n'
        '[outputs.out]\ntype = "dataset"\nmarker = "size.txt"\nalias = "reads-{run.id}"\n'
    )
    return recipe


def test_appending_to_an_external_input_makes_the_next_run_compute_again(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("a,b\n1,2\n")
    settle(data)
    recipe = reads_external_recipe(tmp_path, data)
    first, status, _ = run_wait(env, recipe)
    assert status == "submitted"
    again, status, out = run_wait(env, recipe, "--explain-cache")
    assert status == "cache_hit"
    hit = next(line for line in out.splitlines() if line.startswith("cache hit:"))
    assert hit.startswith(f"cache hit: reused the outputs of {first} (succeeded 20")
    explained = next(line for line in out.splitlines() if line.strip().startswith("input"))
    assert f"data: external {data}" in explained and "content hash reused" in explained
    with open(data / "train.csv", "a") as f:
        f.write("3,4\n")  # same path, more rows
    third, status, out = run_wait(env, recipe, "--explain-cache")
    assert status == "submitted" and third not in (first, again)
    assert "content hashed now" in out
    size = Path(json.loads(run_cli(env, "show", third, check=True).stdout)["outputs"][0]["path"]) / "size.txt"
    assert size.read_text().strip() == "12"


def test_editing_the_script_a_repo_less_recipe_names_makes_the_next_run_compute_again(
    env: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "job.sh"
    script.write_text('mkdir -p "$1" && echo v1 > "$1/result.txt"\n')
    recipe = tmp_path / "script.toml"
    recipe.write_text(
        f'name = "script-job"\ncommand = ["bash", "{script}", "{{outputs.out.path}}"]\n'
        '[outputs.out]\ntype = "dataset"\nmarker = "result.txt"\nalias = "script-{run.id}"\n'
    )
    assert run_wait(env, recipe)[1] == "submitted"
    assert run_wait(env, recipe)[1] == "cache_hit"
    script.write_text('mkdir -p "$1" && echo v2 > "$1/result.txt"\n')
    second, status, out = run_wait(env, recipe, "--explain-cache")
    assert status == "submitted", out
    assert any(line.strip().startswith("file") and str(script) in line for line in out.splitlines())
    shown = json.loads(run_cli(env, "show", second, check=True).stdout)
    assert shown["cache"]["parts"]["files"] == {
        str(script.resolve()): shown["cache"]["parts"]["files"][str(script.resolve())]
    }
    assert (Path(shown["outputs"][0]["path"]) / "result.txt").read_text() == "v2\n"


def test_a_run_that_exits_0_without_its_marker_succeeds_but_says_so_and_is_never_reused(
    conn: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    first, status, out = run_wait(env, RECIPES / "no_marker.toml")
    assert status == "submitted"
    assert re.search(rf"^{first}: succeeded exit_code=0 \(exit 0 but output data has no marker", out, re.M), out
    second, status, _ = run_wait(env, RECIPES / "no_marker.toml")
    assert status == "submitted" and second != first  # computed again, not a cache hit on nothing
    shown = json.loads(run_cli(env, "show", first, check=True).stdout)
    assert shown["status"] == "succeeded" and "not registered, not cached" in shown["reason"]
    assert shown["outputs"] == []


def test_show_explains_a_cache_hits_key_and_names_the_run_it_reused(env: dict[str, str]) -> None:
    hello = REPO / "examples" / "ml" / "recipes" / "hello.toml"
    first, _, _ = run_wait(env, hello)
    hit, status, _ = run_wait(env, hello)
    assert status == "cache_hit"
    shown = json.loads(run_cli(env, "show", hit, check=True).stdout)
    cache = shown["cache"]
    assert cache["reused"]["run_id"] == first and cache["reused"]["status"] == "succeeded"
    assert cache["key"] == shown["cache_key"] and cache["explained"][0] == f"cache key {shown['cache_key']}"
    assert set(cache["parts"]) >= {"recipe"}


def test_a_fingerprint_is_reused_while_sizes_and_mtimes_hold_and_recomputed_when_a_file_changes(
    db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "d"
    (data / "sub").mkdir(parents=True)
    (data / "a.bin").write_bytes(b"x" * 1000)
    (data / "sub" / "b.bin").write_bytes(b"y" * 10)
    with Database(db_url) as db:
        fresh = fingerprint(db.conn, str(data))  # just written: racily clean, not stored
        assert not fresh.reused and (fresh.files, fresh.bytes) == (2, 1010)
        assert not fingerprint(db.conn, str(data)).reused
        settle(data)
        stored = fingerprint(db.conn, str(data))
        again = fingerprint(db.conn, str(data))
        assert again.reused and again.content_hash == stored.content_hash == fresh.content_hash
        before = tree_stat(str(data)).digest
        (data / "sub" / "b.bin").write_bytes(b"z" * 10)  # same size, new bytes and mtime
        settle(data)
        os.utime(data / "sub" / "b.bin", (time.time() - 30, time.time() - 30))
        assert tree_stat(str(data)).digest != before
        changed = fingerprint(db.conn, str(data))
        assert not changed.reused and changed.content_hash != stored.content_hash
