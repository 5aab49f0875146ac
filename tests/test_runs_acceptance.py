"""Acceptance: runs through the real `labctl` CLI in subprocesses, against a real Postgres and real processes.

Each test gets a fresh database (``db_url``) and its own ``$LABCTL_HOME``. Waits
poll a condition until a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import conftest
from tests.conftest import REPO, USER, agent, labctl_bin, run_cli

RECIPES = Path(__file__).resolve().parent / "data" / "recipes"
HELLO = REPO / "examples" / "ml" / "recipes" / "hello.toml"
RUN_KEYS = ("run_id", "job_id", "run_dir")
# Runs are quick: wait 20 s for them unless a test says otherwise.
wait_for = functools.partial(conftest.wait_for, timeout=20.0)

# ------------------------------------------------------------------ helpers


def printed(stdout: str, key: str) -> str:
    """The value of a ``key: value`` line that `labctl run` prints."""
    found = re.search(rf"^{key}: (\S+)$", stdout, re.MULTILINE)
    assert found, f"no '{key}:' line in:\n{stdout}"
    return found.group(1)


def submit(env: dict[str, str], recipe: Path, *args: str) -> str:
    """`labctl run RECIPE ARGS` (no --wait); the new run's id."""
    proc = run_cli(env, "run", str(recipe), *args, check=True)
    return printed(proc.stdout, "run_id")


def run_row(conn: psycopg.Connection[Any], run_id: str) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM runs WHERE id = %s", (run_id,))
    row = cur.fetchone()
    assert row is not None, f"no run {run_id}"
    return dict(zip([d.name for d in cur.description or []], row, strict=True))


def status_of(conn: psycopg.Connection[Any], run_id: str) -> str:
    return str(run_row(conn, run_id)["status"])


def event_types(conn: psycopg.Connection[Any], run_id: str) -> list[str]:
    rows = conn.execute("SELECT type FROM events WHERE stream = %s ORDER BY version", (f"run-{run_id}",))
    return [r[0] for r in rows]


def events_of_type(conn: psycopg.Connection[Any], type_: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT data FROM events WHERE type = %s ORDER BY position", (type_,))
    return [r[0] for r in rows]


def event_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM events").fetchone()
    assert row is not None
    return int(row[0])


def linked_artifacts(conn: psycopg.Connection[Any], run_id: str) -> list[tuple[str, str, int | None]]:
    """``(role, artifact id, step)`` of a run's outputs."""
    rows = conn.execute(
        "SELECT role, artifact_id, step FROM run_outputs WHERE run_id = %s ORDER BY role, step NULLS FIRST", (run_id,)
    )
    return [(r[0], r[1], r[2]) for r in rows]


def submitted_data(conn: psycopg.Connection[Any], run_id: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT data FROM events WHERE stream = %s AND type = 'RunSubmitted' ORDER BY version LIMIT 1",
        (f"run-{run_id}",),
    ).fetchone()
    assert row is not None, f"no RunSubmitted for {run_id}"
    return dict(row[0])


def job_pid(conn: psycopg.Connection[Any], run_id: str) -> int:
    """The pid (and process group) of a local job, from its ``host:pid`` job id."""
    job_id = run_row(conn, run_id)["job_id"]
    assert job_id and ":" in job_id, f"{run_id} has no local job id: {job_id!r}"
    return int(job_id.rpartition(":")[2])


def live_processes_in_group(pgid: int) -> list[int]:
    """Pids of processes in process group ``pgid`` that are not zombies (an unreaped zombie is gone)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def live_agent_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM agents WHERE stopped_at IS NULL AND heartbeat_at > now() - interval '5 seconds'"
    ).fetchone()
    assert row is not None
    return int(row[0])


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """stderr is exactly one ``labctl: error:`` line, without a traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("labctl: error: "), lines[0]
    return lines[0]


# --------------------------------------------------------- success and store


def test_hello_succeeds_prints_its_ids_and_stores_its_output_by_content_hash(
    conn: psycopg.Connection[Any], env: dict[str, str], home: Path
) -> None:
    proc = run_cli(env, "run", str(HELLO), "--wait")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for key in RUN_KEYS:
        printed(proc.stdout, key)
    run_id = printed(proc.stdout, "run_id")
    run_dir = Path(printed(proc.stdout, "run_dir"))

    [(role, aid, step)] = linked_artifacts(conn, run_id)
    assert (role, step) == ("greeting", None)
    digest, path, kind = conn.execute("SELECT hash, path, kind FROM artifacts WHERE id = %s", (aid,)).fetchone()  # type: ignore[misc]
    root = home / "artifacts" / "dataset"
    obj = root / "_objects" / digest[:2] / digest
    assert kind == "dataset" and Path(path) == obj
    assert (obj / "hello.txt").read_text() == "hello\n"
    meta = json.loads((obj / ".meta.json").read_text())
    assert (meta["id"], meta["hash"], meta["producer_run_id"]) == (aid, digest, run_id)
    alias = root / "aliases" / USER / f"hello-{run_id}"
    assert alias.is_symlink() and alias.resolve() == obj.resolve()
    # the job hashed its output where it wrote it; registration recorded that hash
    assert json.loads((run_dir / ".lab" / "output_hashes.json").read_text()) == {"greeting": digest}

    shown = json.loads(run_cli(env, "show", run_id, check=True).stdout)
    assert shown["status"] == "succeeded"
    assert [(o["role"], o["artifact_id"]) for o in shown["outputs"]] == [("greeting", aid)]
    assert f"hello from {run_id}" in run_cli(env, "log", run_id, check=True).stdout

    rows = [json.loads(line) for line in run_cli(env, "status", "--json", check=True).stdout.splitlines()]
    [row] = [r for r in rows if r["id"] == run_id]
    fields = {"id", "name", "status", "exit_code", "user", "created_at", "finished_at"}
    assert fields | {"cache_key", "pipeline_id", "stage_name"} <= row.keys()
    assert (row["name"], row["status"], row["exit_code"], row["user"]) == ("hello", "succeeded", 0, USER)
    assert row["finished_at"] and row["cache_key"] and row["pipeline_id"] is None


# ------------------------------------------------------- failure and caching


def test_a_run_exiting_3_fails_registers_nothing_and_is_not_cached(
    conn: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    recipe = RECIPES / "fail_after_output.toml"
    first = run_cli(env, "run", str(recipe), "--wait")
    assert first.returncode != 0
    first_id = printed(first.stdout, "run_id")
    row = run_row(conn, first_id)
    assert (row["status"], row["exit_code"]) == ("failed", 3)
    assert events_of_type(conn, "ArtifactRegistered") == []
    assert linked_artifacts(conn, first_id) == []

    second = run_cli(env, "run", str(recipe), "--wait")
    assert second.returncode != 0
    second_id = printed(second.stdout, "run_id")
    assert status_of(conn, second_id) == "failed"
    assert "RunStarted" in event_types(conn, second_id) and "RunCacheHit" not in event_types(conn, second_id)


def test_a_second_identical_run_is_a_cache_hit_on_the_same_artifacts_without_a_job_and_no_cache_runs_again(
    conn: psycopg.Connection[Any], env: dict[str, str], home: Path
) -> None:
    first_id = printed(run_cli(env, "run", str(HELLO), "--wait", check=True).stdout, "run_id")
    hit = run_cli(env, "run", str(HELLO), "--wait", check=True)
    hit_id = printed(hit.stdout, "run_id")
    assert "status: cache_hit" in hit.stdout
    assert status_of(conn, hit_id) == "cache_hit"
    assert run_row(conn, hit_id)["producer_run_id"] == first_id
    assert [a for _, a, _ in linked_artifacts(conn, hit_id)] == [a for _, a, _ in linked_artifacts(conn, first_id)]
    assert not {"RunClaimed", "JobSubmitted", "RunStarted"} & set(event_types(conn, hit_id))
    # the cache hit's own alias names the same object on disk
    root = home / "artifacts" / "dataset" / "aliases" / USER
    assert (root / f"hello-{hit_id}").resolve() == (root / f"hello-{first_id}").resolve()

    forced = run_cli(env, "run", str(HELLO), "--no-cache", "--wait", check=True)
    forced_id = printed(forced.stdout, "run_id")
    assert status_of(conn, forced_id) == "succeeded"
    assert "RunStarted" in event_types(conn, forced_id)


def test_a_job_over_its_time_limit_ends_as_timeout(conn: psycopg.Connection[Any], env: dict[str, str]) -> None:
    started = time.monotonic()
    proc = run_cli(env, "run", str(RECIPES / "timeout.toml"), "--wait", timeout=30)
    assert proc.returncode != 0
    assert status_of(conn, printed(proc.stdout, "run_id")) == "timeout"
    assert time.monotonic() - started < 15  # 2 s limit + SIGTERM, not the job's 30 s


# ------------------------------------------------------------------ cancel


def test_cancelling_a_running_job_ends_it_cancelled_and_kills_its_process_group(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    with agent(env, tmp_path / "agent.log"):
        run_id = submit(env, RECIPES / "sleep.toml")
        wait_for(lambda: status_of(conn, run_id) == "running", "the sleep job to run")
        pgid = job_pid(conn, run_id)
        assert live_processes_in_group(pgid)
        cancelled = run_cli(env, "cancel", run_id, check=True)
        assert cancelled.stdout.strip() == f"{run_id}: requested"
        wait_for(lambda: status_of(conn, run_id) == "cancelled", "the run to end cancelled")
        wait_for(lambda: not live_processes_in_group(pgid), "the job's process group to be gone", timeout=5)


def test_cancelling_a_queued_run_ends_it_at_once(conn: psycopg.Connection[Any], env: dict[str, str]) -> None:
    run_id = submit(env, RECIPES / "sleep.toml")
    assert status_of(conn, run_id) == "submitted"
    assert run_cli(env, "cancel", run_id, check=True).stdout.strip() == f"{run_id}: cancelled"
    assert status_of(conn, run_id) == "cancelled"
    assert "RunClaimed" not in event_types(conn, run_id)


def test_a_cancelled_queued_run_frees_its_cache_key_for_the_next_identical_run(
    conn: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    cancelled = submit(env, RECIPES / "quick.toml")
    run_cli(env, "cancel", cancelled, check=True)
    proc = run_cli(env, "run", str(RECIPES / "quick.toml"), "--wait", timeout=20)  # it used to wait forever
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "awaiting_peer" not in proc.stdout
    assert status_of(conn, printed(proc.stdout, "run_id")) == "succeeded"


def test_cancelling_another_users_run_needs_force_and_records_who_cancelled(
    conn: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    run_id = submit({**env, "LABCTL_USER": "bob"}, RECIPES / "sleep.toml")
    refused = run_cli(env, "cancel", run_id)
    assert refused.returncode == 1
    assert "bob" in one_error_line(refused) and "--force" in refused.stderr
    assert status_of(conn, run_id) == "submitted"
    assert "CancelRequested" not in event_types(conn, run_id)

    run_cli(env, "cancel", "--force", run_id, check=True)
    assert status_of(conn, run_id) == "cancelled"
    [(data, meta)] = conn.execute(
        "SELECT data, meta FROM events WHERE stream = %s AND type = 'CancelRequested'", (f"run-{run_id}",)
    ).fetchall()
    assert (data["actor"], data["forced"], meta["actor"]) == (USER, True, USER)


# --------------------------------------------------------------- node_fail


def test_a_run_of_an_agent_killed_with_sigkill_ends_node_fail_and_its_orphan_is_killed(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, "LABCTL_AGENT_STALE_SECONDS": "2"}
    with agent(env, tmp_path / "first.log") as first:
        run_id = submit(env, RECIPES / "sleep.toml")
        wait_for(lambda: status_of(conn, run_id) == "running", "the sleep job to run")
        pgid = job_pid(conn, run_id)
        first.kill()
        first.wait(10)
    assert live_processes_in_group(pgid), "the job should outlive its killed agent"
    with agent(env, tmp_path / "second.log"):
        wait_for(lambda: status_of(conn, run_id) == "node_fail", "the second agent to end the run node_fail")
        wait_for(lambda: not live_processes_in_group(pgid), "the orphaned job to be killed", timeout=5)
    types = event_types(conn, run_id)
    assert types.count("JobSubmitted") == 1 and types.count("RunClaimed") == 1


# ------------------------------------------------------------ coalescing


def test_eight_concurrent_identical_runs_execute_the_command_once_and_share_its_artifacts(
    conn: psycopg.Connection[Any], env: dict[str, str], home: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared.txt"
    argv = [*labctl_bin(), "run", str(RECIPES / "coalesce.toml"), "--set", f"env.SHARED={shared}", "--wait"]
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)
    ]
    results = [(p.communicate(timeout=60), p.returncode) for p in procs]
    for (out, err), rc in results:
        assert rc == 0, out + err
    assert len(shared.read_text().splitlines()) == 1
    run_ids = [printed(out, "run_id") for (out, _), _ in results]
    assert {status_of(conn, r) for r in run_ids} <= {"succeeded", "cache_hit"}
    links = {tuple(linked_artifacts(conn, r)) for r in run_ids}
    assert len(links) == 1 and next(iter(links)), links
    aliases = home / "artifacts" / "dataset" / "aliases" / USER
    assert len({(aliases / f"coalesce-{r}").resolve(strict=True) for r in run_ids}) == 1
    assert len(events_of_type(conn, "ArtifactRegistered")) == 1
    assert len(events_of_type(conn, "JobSubmitted")) == 1


# ---------------------------------------------------------------- outputs


def test_an_output_without_its_marker_is_not_registered_though_the_run_succeeds(
    conn: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    proc = run_cli(env, "run", str(RECIPES / "no_marker.toml"), "--wait")
    assert proc.returncode == 0, proc.stderr
    run_id = printed(proc.stdout, "run_id")
    assert status_of(conn, run_id) == "succeeded"
    assert events_of_type(conn, "ArtifactRegistered") == []
    assert linked_artifacts(conn, run_id) == []


def test_a_marker_left_at_the_output_path_refuses_the_submission_and_appends_nothing(
    conn: psycopg.Connection[Any], env: dict[str, str], home: Path
) -> None:
    marker = home / "artifacts" / "outputs" / "dataset" / USER / "fixed-output" / "DONE"
    marker.parent.mkdir(parents=True)
    marker.touch()
    proc = run_cli(env, "run", str(RECIPES / "fixed_alias.toml"))
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "fixed_alias.toml" in line and "outputs.data.marker" in line and str(marker) in line
    assert event_count(conn) == 0


def test_a_checkpoint_stream_registers_one_checkpoint_per_finished_step(
    conn: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    proc = run_cli(env, "run", str(RECIPES / "checkpoints.toml"), "--wait")
    assert proc.returncode == 0, proc.stderr
    run_id = printed(proc.stdout, "run_id")
    registered = events_of_type(conn, "ArtifactRegistered")
    assert [(a["kind"], a["metadata"]["step"]) for a in registered] == [("checkpoint", 1), ("checkpoint", 2)]
    assert [step for _, _, step in linked_artifacts(conn, run_id)] == [1, 2]


def test_hash_outputs_writes_the_manifest_and_registration_trusts_it(
    conn: psycopg.Connection[Any], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from labctl.app import open_app
    from labctl.artifacts import dir_content_hash
    from labctl.executors.base import JobState
    from labctl.finish import finish_run

    run_id = submit(env, RECIPES / "hand_output.toml")  # no agent: it stays queued
    run_dir = Path(run_row(conn, run_id)["run_dir"])
    out = Path(submitted_data(conn, run_id)["outputs"][0]["path"])
    assert out.is_dir()  # made at submission, for the command to write into
    (out / "weights.bin").write_bytes(b"\x00" * 1000)
    (out / "DONE").touch()

    hashed = run_cli(env, "hash-outputs", "--run-dir", str(run_dir), check=True)
    digest = dir_content_hash(out)
    assert hashed.stdout.strip() == f"data: {digest}"
    assert json.loads((run_dir / ".lab" / "output_hashes.json").read_text()) == {"data": digest}

    # A file appearing after hashing changes the directory's hash: registering with the
    # manifest's hash (not a re-hash) proves registration read the manifest.
    (out / "late.txt").write_text("written after hashing")
    for key in ("LABCTL_DATABASE_URL", "LABCTL_HOME", "XDG_CONFIG_HOME", "LABCTL_USER"):
        monkeypatch.setenv(key, env[key])
    app = open_app()
    try:
        finish_run(app.db, app.config, run_id, JobState(job_id="by-hand", state="succeeded", exit_code=0), app.meta())
    finally:
        app.close()
    [registered] = events_of_type(conn, "ArtifactRegistered")
    assert registered["hash"] == digest != dir_content_hash(out, exclude_top=(".meta.json",))


# ----------------------------------------------------------- bad input


BAD_RECIPES = [
    ("unknown_field.toml", "comand"),
    ("missing_name.toml", "name"),
    ("wrong_type.toml", "command"),
    ("bad_mem.toml", "resources.mem"),
    ("unresolved_token.toml", "command[1]"),
    ("stage_input.toml", "inputs.data.type"),
    ("unknown_alias.toml", "inputs.data.artifact"),
    ("missing_external.toml", "inputs.data.path"),
    ("unknown_repo.toml", "repo"),
    ("syntax_error.toml", "invalid TOML"),
]


@pytest.mark.parametrize(("name", "field"), BAD_RECIPES, ids=[n.removesuffix(".toml") for n, _ in BAD_RECIPES])
def test_a_bad_recipe_is_refused_in_one_line_naming_file_and_field_with_nothing_appended(
    conn: psycopg.Connection[Any], env: dict[str, str], name: str, field: str
) -> None:
    proc = run_cli(env, "run", str(RECIPES / "bad" / name))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_error_line(proc)
    assert f"{name}" in line and f"{field}" in line, line
    assert event_count(conn) == 0


def test_a_malformed_set_override_is_refused_in_one_line_with_nothing_appended(
    conn: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    proc = run_cli(env, "run", str(HELLO), "--set", "seconds")
    assert proc.returncode == 2
    assert "--set 'seconds'" in one_error_line(proc)
    assert event_count(conn) == 0


@pytest.mark.parametrize("command", ["show", "log", "cancel", "history"])
def test_an_unknown_run_id_is_one_line_and_exit_1(env: dict[str, str], command: str) -> None:
    proc = run_cli(env, command, "run_doesnotexist")
    assert proc.returncode == 1
    assert "run_doesnotexist" in one_error_line(proc)


def test_an_ambiguous_run_prefix_is_one_line_listing_the_matches(env: dict[str, str]) -> None:
    ids = [submit(env, RECIPES / "quick.toml", "--set", f"params.i={i}") for i in range(2)]
    prefix = ids[0][: next(i for i, (a, b) in enumerate(zip(*ids, strict=True)) if a != b)]
    for command in ("show", "log", "cancel", "history"):
        proc = run_cli(env, command, prefix)
        assert proc.returncode == 1, (command, proc.stdout, proc.stderr)
        line = one_error_line(proc)
        assert "ambiguous" in line and all(i in line for i in ids), line


def test_a_dead_database_is_one_line_and_a_nonzero_exit(env: dict[str, str]) -> None:
    dead = {**env, "LABCTL_DATABASE_URL": "postgresql://labctl@127.0.0.1:9/labctl", "LABCTL_DB_RETRY_SECONDS": "1"}
    proc = run_cli(dead, "run", str(HELLO), timeout=30)
    assert proc.returncode != 0
    assert "127.0.0.1" in one_error_line(proc)


# ------------------------------------------------------------ provenance


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_a_repo_run_works_in_a_snapshot_records_its_commit_and_diff_and_sees_its_environment(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "train.sh").write_text('pwd > "$LABCTL_RUN_DIR/seen_cwd"\nenv -0 > "$LABCTL_RUN_DIR/seen_env"\n')
    (repo / "version.txt").write_text("committed\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    commit = _git(repo, "rev-parse", "HEAD")
    (repo / "version.txt").write_text("uncommitted change\n")

    store = tmp_path / "store"
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(
        f"""name = "acceptance"

[filesystem]
runs_base = "{store / "runs"}"

[filesystem.artifact_roots]
dataset = "{store / "artifacts" / "dataset"}"
checkpoint = "{store / "artifacts" / "checkpoint"}"
eval_result = "{store / "artifacts" / "eval_result"}"

[filesystem.output_roots]
dataset = "{store / "outputs" / "dataset"}"
checkpoint_stream = "{store / "outputs" / "checkpoint_stream"}"
eval_result = "{store / "outputs" / "eval_result"}"

[repos]
r = "{repo}"

[scheduler]
kind = "local"

[env]
FROM_CLUSTER = "cluster"
FROM_BOTH = "cluster"
"""
    )
    proc = run_cli(env, "--cluster", str(cluster), "run", str(RECIPES / "provenance.toml"), "--wait")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = printed(proc.stdout, "run_id")
    run_dir = Path(printed(proc.stdout, "run_dir"))
    assert run_dir == store / "runs" / "runs" / USER / run_id  # <runs_base>/runs/<user>/<run id>, as the original
    source = run_dir / "source" / "r"

    assert Path((run_dir / "seen_cwd").read_text().strip()) == source
    assert (source / "train.sh").is_file()
    assert (source / "version.txt").read_text() == "uncommitted change\n"
    submitted = submitted_data(conn, run_id)
    assert (submitted["repo"], submitted["repo_commit"], submitted["repo_dirty"]) == ("r", commit, True)
    assert "+uncommitted change" in submitted["repo_diff"]

    seen = dict(item.split("=", 1) for item in (run_dir / "seen_env").read_text().split("\0") if "=" in item)
    assert seen["LABCTL_RUN_ID"] == run_id
    assert seen["LABCTL_RUN_DIR"] == str(run_dir)
    assert seen["LABCTL_CONTEXT"] == str(run_dir / ".lab" / "context.json")
    assert seen["LABCTL_JOB_ID"] == f"local-{run_id}"  # the original's local job id
    assert (seen["FROM_CLUSTER"], seen["FROM_BOTH"], seen["FROM_RECIPE"]) == ("cluster", "recipe", "recipe")
    assert (seen["WANDB_RUN_ID"], seen["WANDB_RESUME"]) == (run_id, "allow")
    assert (seen["WANDB_ENTITY"], seen["WANDB_PROJECT"]) == ("lab", "acceptance")


# ------------------------------------------------------------ many agents


def test_three_agents_claim_and_start_each_of_twelve_queued_runs_exactly_once(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    with (
        agent(env, tmp_path / "a1.log", "--slots", "2"),
        agent(env, tmp_path / "a2.log", "--slots", "2"),
        agent(env, tmp_path / "a3.log", "--slots", "2"),
    ):
        wait_for(lambda: live_agent_count(conn) == 3, "three agents to register")
        argv = [*labctl_bin(), "run", str(RECIPES / "quick.toml")]
        procs = [
            subprocess.Popen([*argv, "--set", f"params.i={i}"], env=env, stdout=subprocess.PIPE, text=True)
            for i in range(12)
        ]
        run_ids = [printed(p.communicate(timeout=60)[0], "run_id") for p in procs]
        ended = "SELECT count(*) FROM runs WHERE status IN ('succeeded', 'failed', 'cancelled', 'node_fail')"
        wait_for(lambda: conn.execute(ended).fetchone()[0] == 12, "all twelve runs to end", timeout=40)  # type: ignore[index]
    for run_id in run_ids:
        assert status_of(conn, run_id) == "succeeded"
        types = event_types(conn, run_id)
        assert (types.count("RunClaimed"), types.count("JobSubmitted")) == (1, 1), (run_id, types)
