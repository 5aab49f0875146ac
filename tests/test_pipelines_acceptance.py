"""Acceptance: pipelines, sweeps and evals through the real `labctl` CLI, real agents, real Postgres.

Recipes live in tests/data/pipelines/ (bash one-liners writing outputs and markers).
Every assertion is about the event log or what a user sees; every wait polls a
condition until a deadline. Stages that must be "in the middle" when something
goes wrong hold on a gate file the test opens (chain/b.toml, ``$PIPELINE_GATE``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from labctl.db import connect, ensure_schema
from tests.conftest import USER, agent, labctl_bin, run_cli, wait_for

DATA = Path(__file__).resolve().parent / "data" / "pipelines"
TERMINAL_PIPELINE = ("succeeded", "failed", "cancelled")

# ------------------------------------------------------------------ helpers


class Submitted:
    """What `run-pipeline` / `run-sweep` printed: the ids, and each stage's run ids."""

    def __init__(self, stdout: str) -> None:
        if stdout.startswith("{"):  # run-pipeline, piped: the original's JSON (then any --wait lines)
            shown, _ = json.JSONDecoder().raw_decode(stdout)
            self.pipeline_id, self.sweep_id, self.stages = shown["pipeline_id"], shown["sweep_id"], shown["runs"]
            return
        found = re.search(r"^pipeline_id: (\S+)$", stdout, re.MULTILINE)
        assert found, f"no 'pipeline_id:' line in:\n{stdout}"
        self.pipeline_id = found.group(1)
        sweep = re.search(r"^sweep_id: (\S+)$", stdout, re.MULTILINE)
        self.sweep_id = sweep.group(1) if sweep else None
        self.stages = {m.group(1): m.group(2).split(", ") for m in re.finditer(r"^stage (\S+): (.+)$", stdout, re.M)}

    def run(self, stage: str) -> str:
        (run_id,) = self.stages[stage]
        return run_id

    @property
    def run_ids(self) -> list[str]:
        return [r for runs in self.stages.values() for r in runs]


def run_pipeline(env: dict[str, str], path: Path, *args: str, check: bool = True) -> Submitted:
    proc = run_cli(env, "run-pipeline", str(path), *args, check=check)
    return Submitted(proc.stdout)


def pipeline_status(conn: psycopg.Connection[Any], pipeline_id: str) -> str:
    row = conn.execute("SELECT status FROM pipelines WHERE id = %s", (pipeline_id,)).fetchone()
    assert row is not None, f"no pipeline {pipeline_id}"
    return str(row[0])


def pipeline_ended(conn: psycopg.Connection[Any], pipeline_id: str, timeout: float = 30.0) -> str:
    """Wait until the pipeline is closed; its final state."""
    return wait_for(
        lambda: (s := pipeline_status(conn, pipeline_id)) in TERMINAL_PIPELINE and s,
        f"pipeline {pipeline_id} to end",
        timeout,
    )


def run_row(conn: psycopg.Connection[Any], run_id: str) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM runs WHERE id = %s", (run_id,))
    row = cur.fetchone()
    assert row is not None, f"no run {run_id}"
    return dict(zip([d.name for d in cur.description or []], row, strict=True))


def status_of(conn: psycopg.Connection[Any], run_id: str) -> str:
    return str(run_row(conn, run_id)["status"])


def event_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM events").fetchone()
    assert row is not None
    return int(row[0])


def events_of(conn: psycopg.Connection[Any], run_id: str, type_: str) -> list[tuple[int, dict[str, Any]]]:
    """``(position, data)`` of one run's events of a type, in log order."""
    rows = conn.execute(
        "SELECT position, data FROM events WHERE stream = %s AND type = %s ORDER BY position", (f"run-{run_id}", type_)
    )
    return [(r[0], r[1]) for r in rows]


def only_event(conn: psycopg.Connection[Any], run_id: str, type_: str) -> tuple[int, dict[str, Any]]:
    found = events_of(conn, run_id, type_)
    assert len(found) == 1, f"{run_id}: expected one {type_}, found {len(found)}"
    return found[0]


def per_stream_counts(conn: psycopg.Connection[Any], type_: str) -> Counter[str]:
    rows = conn.execute("SELECT stream, count(*) FROM events WHERE type = %s GROUP BY stream", (type_,))
    return Counter({r[0]: int(r[1]) for r in rows})


def assert_each_run_submitted_once(conn: psycopg.Connection[Any], run_ids: list[str]) -> None:
    """Every run of the list has exactly one RunSubmitted, and no run anywhere has two (nor two ends)."""
    submitted = per_stream_counts(conn, "RunSubmitted")
    twice = {s: n for s, n in submitted.items() if n > 1}
    assert not twice, f"runs submitted more than once: {twice}"
    ended = {s: n for s, n in per_stream_counts(conn, "RunFinished").items() if n > 1}
    assert not ended, f"runs that ended more than once: {ended}"
    missing = [r for r in run_ids if submitted[f"run-{r}"] != 1]
    assert not missing, f"runs never submitted: {missing}"


def output_artifact(conn: psycopg.Connection[Any], run_id: str, role: str) -> tuple[str, str, str]:
    """``(artifact id, path, hash)`` of a run's single (non-stream) output."""
    row = conn.execute(
        "SELECT a.id, a.path, a.hash FROM run_outputs o JOIN artifacts a ON a.id = o.artifact_id "
        "WHERE o.run_id = %s AND o.role = %s AND o.step IS NULL",
        (run_id, role),
    ).fetchone()
    assert row is not None, f"{run_id} registered no output {role!r}"
    return row[0], row[1], row[2]


def submitted_inputs(conn: psycopg.Connection[Any], run_id: str) -> dict[str, dict[str, Any]]:
    _, data = only_event(conn, run_id, "RunSubmitted")
    return {i["role"]: i for i in data.get("inputs", [])}


def artifacts_read(conn: psycopg.Connection[Any], run_id: str) -> dict[str, dict[str, Any]]:
    """The inputs a run was submitted with, less the aliases (which name the parent run of each)."""
    return {r: {k: v for k, v in i.items() if k != "alias"} for r, i in submitted_inputs(conn, run_id).items()}


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """stderr is exactly one ``labctl: error:`` line, without a traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("labctl: error: "), lines[0]
    return lines[0]


def live_agents(conn: psycopg.Connection[Any]) -> dict[int, str]:
    """pid -> agent id of agents with a fresh heartbeat."""
    rows = conn.execute(
        "SELECT pid, id FROM agents WHERE stopped_at IS NULL AND heartbeat_at > now() - interval '5 seconds'"
    )
    return {r[0]: r[1] for r in rows}


def agent_id_of(conn: psycopg.Connection[Any], proc: subprocess.Popen[bytes]) -> str:
    return wait_for(lambda: live_agents(conn).get(proc.pid), f"agent pid {proc.pid} to register")


def output_dir_of(conn: psycopg.Connection[Any], run_id: str, role: str) -> Path:
    """Where the job wrote an output (the path labctl computed at submission)."""
    _, data = only_event(conn, run_id, "RunSubmitted")
    (out,) = [o for o in data["outputs"] if o["role"] == role]
    return Path(out["path"])


def write_cluster(tmp_path: Path, home: Path, **dispatch: Any) -> Path:
    """A local cluster.toml under ``home`` with a ``[dispatch]`` table."""
    kinds = ("checkpoint", "dataset", "eval_result", "model", "external")
    outputs = ("checkpoint_stream", "checkpoint", "dataset", "eval_result", "model")
    lines = ['name = "pipelines-test"', "", "[filesystem]", f'runs_base = "{home}/runs"', ""]
    lines += ["[filesystem.artifact_roots]", *(f'{k} = "{home}/artifacts/{k}"' for k in kinds), ""]
    lines += ["[filesystem.output_roots]", *(f'{k} = "{home}/outputs/{k}"' for k in outputs), ""]
    lines += ["[scheduler]", 'kind = "local"', "", "[dispatch]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in dispatch.items()]
    path = tmp_path / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------ 1. the diamond


def test_a_diamond_runs_d_after_b_and_c_on_their_content_addressed_outputs(
    conn: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    proc = run_cli(env, "run-pipeline", str(DATA / "diamond" / "pipeline.toml"), "--wait", check=True)
    p = Submitted(proc.stdout)
    assert proc.stdout.strip().splitlines()[-1] == f"{p.pipeline_id}: succeeded"
    assert pipeline_status(conn, p.pipeline_id) == "succeeded"
    assert {s: status_of(conn, p.run(s)) for s in "abcd"} == dict.fromkeys("abcd", "succeeded")
    assert_each_run_submitted_once(conn, p.run_ids)

    # d was submitted only after both b and c had ended.
    d_submitted, _ = only_event(conn, p.run("d"), "RunSubmitted")
    for parent in "bc":
        ended, data = only_event(conn, p.run(parent), "RunFinished")
        assert data["state"] == "succeeded" and ended < d_submitted

    # d's inputs are b's and c's content-addressed outputs, not their output dirs.
    inputs = submitted_inputs(conn, p.run("d"))
    for role, parent in (("left", "b"), ("right", "c")):
        artifact_id, path, digest = output_artifact(conn, p.run(parent), "out")
        assert inputs[role]["type"] == "stage"
        assert (inputs[role]["path"], inputs[role]["artifact_id"], inputs[role]["hash"]) == (path, artifact_id, digest)
        assert f"/_objects/{digest[:2]}/{digest}" in path
    d_out = Path(output_artifact(conn, p.run("d"), "out")[1])
    assert (d_out / "left.path").read_text().strip() == inputs["left"]["path"]
    assert (d_out / "right.path").read_text().strip() == inputs["right"]["path"]
    assert (d_out / "data.txt").read_text() == "a\nb\na\nc\n"

    finished = conn.execute(
        "SELECT data FROM events WHERE stream = %s AND type = 'PipelineFinished'", (f"pipeline-{p.pipeline_id}",)
    ).fetchall()
    assert [f[0]["state"] for f in finished] == ["succeeded"]

    shown = run_cli(env, "pipeline-show", p.pipeline_id, "--no-json", check=True).stdout  # the tree
    assert shown.splitlines()[0].startswith(f"{p.pipeline_id}  diamond  succeeded")
    for stage in "abcd":
        assert re.search(rf"└─ {stage}: succeeded  \[{p.run(stage)}\]", shown), shown
    view = json.loads(run_cli(env, "pipeline-show", p.pipeline_id, "--json", check=True).stdout)
    assert view["status"] == "succeeded" and view["name"] == "diamond"
    assert {s["name"]: (s["state"], s["parents"]) for s in view["dag"]} == {
        "a": ("succeeded", []),
        "b": ("succeeded", ["a"]),
        "c": ("succeeded", ["a"]),
        "d": ("succeeded", ["b", "c"]),
    }
    listed = run_cli(env, "pipeline", "ls", check=True).stdout
    assert re.search(rf"^{p.pipeline_id}\s+diamond\s+succeeded\s+{USER}", listed, re.M), listed


# --------------------------------------------------- 2. failure in the middle


def test_a_failing_stage_fails_its_descendants_naming_it_while_a_sibling_branch_succeeds(
    conn: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    proc = run_cli(env, "run-pipeline", str(DATA / "midfail" / "pipeline.toml"), "--wait")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    p = Submitted(proc.stdout)
    b, c = p.run("b"), p.run("c")

    _, b_end = only_event(conn, b, "RunFinished")
    assert (b_end["state"], b_end["exit_code"]) == ("failed", 3)
    _, c_end = only_event(conn, c, "RunFinished")
    assert c_end["state"] == "dependency_failed"
    assert "stage b" in c_end["reason"] and b in c_end["reason"], c_end["reason"]
    assert events_of(conn, c, "RunSubmitted") == []  # c never ran
    assert status_of(conn, p.run("d")) == "succeeded"
    assert status_of(conn, p.run("a")) == "succeeded"

    assert pipeline_status(conn, p.pipeline_id) == "failed"
    assert proc.stdout.strip().splitlines()[-1].startswith(f"{p.pipeline_id}: failed (stage b: {b} ended failed")
    view = json.loads(run_cli(env, "pipeline-show", p.pipeline_id, "--json", check=True).stdout)
    states = {s["name"]: s["state"] for s in view["dag"]}
    assert states == {"a": "succeeded", "b": "failed", "c": "failed", "d": "succeeded"}
    shown = run_cli(env, "pipeline-show", p.pipeline_id, "--no-json", check=True).stdout  # the tree
    assert re.search(rf"└─ c: failed  \[{c}\]", shown), shown


# -------------------------------------------------------- 3. cache-hit chains


def test_the_same_pipeline_again_is_all_cache_hits_resolved_within_the_run_pipeline_call(
    conn: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    first = run_pipeline(env, DATA / "diamond" / "pipeline.toml", "--wait")
    assert pipeline_status(conn, first.pipeline_id) == "succeeded"
    assert live_agents(conn) == {}  # --wait's own agent is gone: nothing else can advance the second one

    second = run_pipeline(env, DATA / "diamond" / "pipeline.toml")  # no --wait
    # Right after the command returned, with no agent anywhere: every stage is already a cache hit.
    assert {s: status_of(conn, second.run(s)) for s in "abcd"} == dict.fromkeys("abcd", "cache_hit")
    assert pipeline_status(conn, second.pipeline_id) == "succeeded"
    for stage in "abcd":
        run_id = second.run(stage)
        _, hit = only_event(conn, run_id, "RunCacheHit")
        assert hit["producer_run_id"] == first.run(stage)
        assert events_of(conn, run_id, "RunStarted") == [] and events_of(conn, run_id, "JobSubmitted") == []
    # The chain resolved on the same artifacts: d read b's and c's outputs of the first pipeline
    # (each under the alias its own parent run gave it).
    assert artifacts_read(conn, second.run("d")) == artifacts_read(conn, first.run("d"))
    assert {i["alias"] for i in submitted_inputs(conn, second.run("d")).values()} == {
        f"{stage}-{second.run(stage)}" for stage in "bc"
    }
    assert live_agents(conn) == {}


# ------------------------------------------------------------- 4. from pins


def _pinned_pipeline(tmp_path: Path, run_id: str, role: str = "out") -> Path:
    """A one-stage pipeline pinned to ``run_id`` whose reader takes the pinned run's ``role`` output."""
    recipe = DATA / "pin" / ("reader.toml" if role == "out" else f"reader_{role}.toml")
    path = tmp_path / "pinned.toml"
    path.write_text(f'name = "pinned"\nfrom = "{run_id}"\n\n[stages.read]\nrecipe = "{recipe}"\n')
    return path


def test_a_pinned_run_feeds_from_inputs_with_its_output(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    base = run_cli(env, "run", str(DATA / "diamond" / "a.toml"), "--wait", check=True)
    base_run = re.search(r"^run_id: (\S+)$", base.stdout, re.M).group(1)  # type: ignore[union-attr]
    artifact_id, path, digest = output_artifact(conn, base_run, "out")

    p = run_pipeline(env, _pinned_pipeline(tmp_path, base_run), "--wait")
    assert pipeline_status(conn, p.pipeline_id) == "succeeded"
    reader = p.run("read")
    base_input = submitted_inputs(conn, reader)["base"]
    assert (base_input["type"], base_input["path"], base_input["hash"]) == ("from", path, digest)
    assert base_input["artifact_id"] == artifact_id
    out = Path(output_artifact(conn, reader, "out")[1])
    assert (out / "source.path").read_text().strip() == path
    assert (out / "data.txt").read_text() == "a\n"
    view = json.loads(run_cli(env, "pipeline-show", p.pipeline_id, "--json", check=True).stdout)
    assert view["from"] == base_run


def test_a_pin_to_an_unknown_run_is_refused_in_one_line_with_nothing_appended(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    run_cli(env, "run", str(DATA / "diamond" / "a.toml"), "--wait", check=True)  # a log that is not empty
    before = event_count(conn)
    pipeline = _pinned_pipeline(tmp_path, "run_doesnotexist00")
    proc = run_cli(env, "run-pipeline", str(pipeline))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_error_line(proc)
    assert str(pipeline) in line and "from" in line and "run_doesnotexist00" in line, line
    assert event_count(conn) == before


def test_a_from_input_naming_an_output_the_pinned_run_lacks_is_refused_with_nothing_appended(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    base = run_cli(env, "run", str(DATA / "diamond" / "a.toml"), "--wait", check=True)
    base_run = re.search(r"^run_id: (\S+)$", base.stdout, re.M).group(1)  # type: ignore[union-attr]
    before = event_count(conn)
    proc = run_cli(env, "run-pipeline", str(_pinned_pipeline(tmp_path, base_run, "weights")))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_error_line(proc)
    assert "reader_weights.toml" in line and " inputs.base.role: " in line and base_run in line, line
    assert event_count(conn) == before


# ---------------------------------------------------------------- 5. refusals


@pytest.mark.parametrize(
    ("command", "path", "named_file", "field"),
    [
        ("run-pipeline", "cycle.toml", "cycle.toml", "stages"),
        ("run-pipeline", "unknown_stage.toml", "reads_nope.toml", "inputs.src.stage"),
        ("run-pipeline", "unknown_role.toml", "reads_weights.toml", "inputs.src.role"),
        ("run-pipeline", "missing_recipe.toml", "missing_recipe.toml", "stages.b.recipe"),
        ("run-sweep", "sweep_unknown_stage.toml", "agg_reads_points.toml", "inputs.points.stage"),
    ],
)
def test_a_bad_pipeline_is_refused_in_one_line_naming_file_and_field_with_nothing_appended(
    conn: psycopg.Connection[Any], env: dict[str, str], command: str, path: str, named_file: str, field: str
) -> None:
    before = event_count(conn)
    proc = run_cli(env, command, str(DATA / "bad" / path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_error_line(proc)
    assert named_file in line and f" {field}: " in line, line
    assert event_count(conn) == before
    assert proc.stdout == ""


# ------------------------------------------- 6. three agents and an eval policy


def test_three_agents_submit_every_stage_and_every_eval_exactly_once(
    conn: psycopg.Connection[Any], env: dict[str, str], home: Path, tmp_path: Path
) -> None:
    cluster = write_cluster(tmp_path, home, policies_dir=str(DATA / "evals" / "policies"), evald_interval_secs=1)
    env = {**env, "LABCTL_CLUSTER": str(cluster)}
    with (
        agent(env, tmp_path / "agent1.log") as a1,
        agent(env, tmp_path / "agent2.log") as a2,
        agent(env, tmp_path / "agent3.log") as a3,
    ):
        for proc in (a1, a2, a3):
            agent_id_of(conn, proc)
        p = run_pipeline(env, DATA / "evals" / "pipeline.toml")
        assert pipeline_ended(conn, p.pipeline_id) == "succeeded"

        def recorded_evals() -> int:
            row = conn.execute("SELECT count(*) FROM evals WHERE recorded_at IS NOT NULL").fetchone()
            return int(row[0]) if row else 0

        wait_for(lambda: recorded_evals() == 3, "three evals (one per checkpoint) to record metrics")
        assert all(proc.poll() is None for proc in (a1, a2, a3))

    assert_each_run_submitted_once(conn, p.run_ids)
    claims = per_stream_counts(conn, "RunClaimed")
    assert all(n == 1 for n in claims.values()), claims

    requested = conn.execute("SELECT stream, data FROM events WHERE type = 'EvalRequested'").fetchall()
    assert len(requested) == 3
    assert Counter(s for s, _ in requested) == Counter({s: 1 for s, _ in requested})  # one per eval stream
    per_checkpoint = Counter((d["checkpoint_artifact_id"], d["eval_recipe_hash"]) for _, d in requested)
    assert sorted(per_checkpoint.values()) == [1, 1, 1]
    train_checkpoints = conn.execute(
        "SELECT artifact_id FROM run_outputs WHERE run_id = %s AND step IS NOT NULL", (p.run("train"),)
    ).fetchall()
    assert {c[0] for c in train_checkpoints} == {ckpt for ckpt, _ in per_checkpoint}
    eval_runs = [d["run_id"] for _, d in requested]
    assert_each_run_submitted_once(conn, eval_runs)
    assert {status_of(conn, r) for r in eval_runs} == {"succeeded"}
    metrics = conn.execute("SELECT step, metrics FROM evals ORDER BY step").fetchall()
    assert [(s, m["score"]) for s, m in metrics] == [(1, 0.1), (2, 0.2), (3, 0.3)]

    # A pass by hand after the agents finds nothing left to evaluate.
    again = json.loads(run_cli(env, "evald", "once", "every-step", check=True).stdout)
    assert (again["submitted"], again["skipped_existing"]) == (0, 3)
    report = Path(output_artifact(conn, p.run("report"), "report")[1])
    assert (report / "steps.txt").read_text().split() == ["step1", "step2", "step3"]


# ------------------------------------------------------ 7. the agent dies


def test_a_standby_agent_finishes_a_pipeline_after_the_active_one_is_killed(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"  # never opened: b holds until its agent dies
    with agent(env, tmp_path / "agent1.log", PIPELINE_GATE=str(gate)) as first:
        first_id = agent_id_of(conn, first)
        p = run_pipeline(env, DATA / "chain" / "pipeline.toml")
        b = p.run("b")
        wait_for(lambda: status_of(conn, b) == "running", "b to run")
        assert run_row(conn, b)["agent_id"] == first_id  # the only agent: it advanced a -> b and holds b
        leader_backend = advancer_lock_holder(conn)
        assert leader_backend is not None  # held by the first agent, the only one so far
        job_pid = int(run_row(conn, b)["job_id"].rpartition(":")[2])

        standby_env = {**env, "LABCTL_AGENT_STALE_SECONDS": "2"}
        with agent(standby_env, tmp_path / "agent2.log", PIPELINE_GATE=str(gate)) as standby:
            agent_id_of(conn, standby)
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)

            assert pipeline_ended(conn, p.pipeline_id) == "failed"
            assert standby.poll() is None
            assert advancer_lock_holder(conn) not in (None, leader_backend)  # the standby took the lead

    _, b_end = only_event(conn, b, "RunFinished")
    assert b_end["state"] == "node_fail" and first_id in b_end["reason"], b_end
    _, c_end = only_event(conn, p.run("c"), "RunFinished")
    assert c_end["state"] == "dependency_failed" and b in c_end["reason"], c_end
    assert status_of(conn, p.run("a")) == "succeeded"
    assert_each_run_submitted_once(conn, [p.run("a"), b])
    assert events_of(conn, p.run("c"), "RunSubmitted") == []
    # The orphaned job of the dead agent was killed, not left holding on its gate.
    wait_for(lambda: not Path(f"/proc/{job_pid}").exists() or _is_zombie(job_pid), "b's orphaned job to die")


def advancer_lock_holder(conn: psycopg.Connection[Any]) -> int | None:
    """The backend pid holding the advancer's leadership lock for ``USER`` (a session advisory lock on a
    bigint key; an agent acts for its own user, so the lock is per user)."""
    from labctl.reactors.base import lock_key

    key = lock_key(f"advancer:{USER}") & 0xFFFFFFFFFFFFFFFF
    row = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND classid = %s AND objid = %s AND objsubid = 1",
        (key >> 32, key & 0xFFFFFFFF),
    ).fetchone()
    return int(row[0]) if row else None


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
    except OSError:
        return True


# ------------------------------------------------- 8. Postgres restarts


@pytest.mark.parametrize(
    "outage",
    [
        pytest.param(0.0, id="restart"),
        pytest.param(3.0, id="down-longer-than-the-retry-budget"),
    ],
)
def test_an_agent_reconnects_after_postgres_restarts_and_finishes_the_pipeline(
    env: dict[str, str], tmp_path: Path, outage: float
) -> None:
    from labctl.db import embedded_url, remove_embedded, stop_embedded

    pg_home = tmp_path / "own-pg"
    url = embedded_url(pg_home)
    with connect(url) as c:  # the schema first: concurrent first connects race in ensure_schema (db.py)
        ensure_schema(c)
    env = {**env, "LABCTL_DATABASE_URL": url}
    gate = tmp_path / "gate"

    def value(query: str, *params: Any) -> Any:
        with connect(url, budget=5) as c:
            row = c.execute(query, params).fetchone()
            return row[0] if row else None

    try:
        with agent(env, tmp_path / "agent.log", PIPELINE_GATE=str(gate)) as worker:
            p = run_pipeline(env, DATA / "chain" / "pipeline.toml")
            b = p.run("b")
            wait_for(lambda: value("SELECT status FROM runs WHERE id = %s", b) == "running", "b to run")

            stop_embedded(pg_home)
            down_until = time.monotonic() + outage  # the outage is the scenario, not a wait for something
            while time.monotonic() < down_until:
                assert worker.poll() is None, (tmp_path / "agent.log").read_text()
                time.sleep(0.1)
            assert embedded_url(pg_home) == url  # same socket: the agent's URL still points at it
            gate.touch()

            wait_for(
                lambda: (
                    worker.poll() is not None
                    or value("SELECT status FROM pipelines WHERE id = %s", p.pipeline_id) in TERMINAL_PIPELINE
                ),
                "the pipeline to end after the restart",
            )
            assert worker.poll() is None, (tmp_path / "agent.log").read_text()[-2000:]
        with connect(url) as c:
            assert pipeline_status(c, p.pipeline_id) == "succeeded"
            assert {s: status_of(c, p.run(s)) for s in "abc"} == dict.fromkeys("abc", "succeeded")
            assert_each_run_submitted_once(c, p.run_ids)
    finally:
        remove_embedded(pg_home)


# ------------------------------------------- 9. the LISTEN connection drops


def _listen_backends(conn: psycopg.Connection[Any]) -> set[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN %%' "
        "AND pid <> pg_backend_pid()"
    )
    return {r[0] for r in rows}


def test_a_pipeline_finishes_after_the_agents_listen_connection_is_terminated(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    with agent(env, tmp_path / "agent.log", PIPELINE_GATE=str(gate)) as worker:
        agent_id_of(conn, worker)
        p = run_pipeline(env, DATA / "chain" / "pipeline.toml")
        wait_for(lambda: status_of(conn, p.run("b")) == "running", "b to run")
        old = wait_for(lambda: _listen_backends(conn), "the agent's LISTEN connection")
        for pid in old:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_for(lambda: _listen_backends(conn) - old, "the agent to LISTEN again on a new connection")
        gate.touch()
        assert pipeline_ended(conn, p.pipeline_id) == "succeeded"
        assert worker.poll() is None
    assert_each_run_submitted_once(conn, p.run_ids)


def test_run_pipeline_wait_survives_its_listen_connection_being_terminated(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    with agent(env, tmp_path / "agent.log", PIPELINE_GATE=str(gate)) as worker:
        agent_id_of(conn, worker)
        waiter = subprocess.Popen(
            [*labctl_bin(), "run-pipeline", str(DATA / "chain" / "pipeline.toml"), "--wait"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(
                lambda: conn.execute("SELECT 1 FROM runs WHERE stage_name = 'b' AND status = 'running'").fetchone(),
                "b to run",
            )
            old = wait_for(lambda: len(_listen_backends(conn)) >= 2 and _listen_backends(conn), "two listeners")
            for pid in old:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            gate.touch()
            out, err = waiter.communicate(timeout=30)
        finally:
            if waiter.poll() is None:
                waiter.kill()
                waiter.wait()
        assert waiter.returncode == 0, out + err
        assert "Traceback" not in err, err
        p = Submitted(out)
        assert out.strip().splitlines()[-1] == f"{p.pipeline_id}: succeeded"


# ------------------------------------------------- 10. sweeps and throttles


def _max_concurrency(conn: psycopg.Connection[Any], run_ids: list[str]) -> int:
    """The most runs of the list running at once, by the log's order of RunStarted and RunFinished."""
    rows = conn.execute(
        "SELECT type FROM events WHERE stream = ANY(%s) AND type IN ('RunStarted', 'RunFinished') ORDER BY position",
        ([f"run-{r}" for r in run_ids],),
    ).fetchall()
    running = peak = 0
    for (type_,) in rows:
        running += 1 if type_ == "RunStarted" else -1
        peak = max(peak, running)
    return peak


def test_a_sweep_runs_at_most_throttle_points_at_once_then_the_aggregate_once_over_all_points(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    with agent(env, tmp_path / "agent.log", "--slots", "4") as worker:
        agent_id_of(conn, worker)
        proc = run_cli(env, "run-sweep", str(DATA / "sweep" / "point.toml"), check=True)
        s = Submitted(proc.stdout)
        assert s.sweep_id is not None
        points, (aggregate,) = s.stages["sweep-point"], s.stages["aggregate"]
        assert len(points) == 5
        assert pipeline_ended(conn, s.pipeline_id) == "succeeded"

    assert _max_concurrency(conn, points) == 2  # throttle 2 with 4 free slots: two at a time, never three
    assert [status_of(conn, r) for r in points] == ["succeeded"] * 5
    assert [run_row(conn, r)["sweep_index"] for r in points] == [0, 1, 2, 3, 4]
    assert_each_run_submitted_once(conn, [*points, aggregate])
    agg_submitted, _ = only_event(conn, aggregate, "RunSubmitted")
    assert all(only_event(conn, r, "RunFinished")[0] < agg_submitted for r in points)

    handed = Path(submitted_inputs(conn, aggregate)["points"]["path"])
    assert sorted(e.name for e in handed.iterdir()) == ["0", "1", "2", "3", "4"]
    for index, run_id in enumerate(points):
        assert os.readlink(handed / str(index)) == output_artifact(conn, run_id, "out")[1]
    summary = Path(output_artifact(conn, aggregate, "summary")[1])
    assert (summary / "entries.txt").read_text().split() == ["0", "1", "2", "3", "4"]
    assert (summary / "sum.txt").read_text().strip() == "10"

    shown = run_cli(env, "sweep", "show", s.sweep_id, check=True).stdout
    assert shown.splitlines()[0].startswith(f"{s.sweep_id}  sweep-point  succeeded  i=0..4  throttle 2")
    for index, run_id in enumerate(points):
        assert re.search(rf"^{index}\s+{run_id}\s+succeeded\s+0", shown, re.M), shown
    assert f"aggregate: {aggregate}" in shown


def test_a_failing_sweep_point_fails_the_aggregate_as_dependency_failed(
    conn: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    proc = run_cli(env, "run-sweep", str(DATA / "sweep" / "point_fail.toml"), "--wait")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    s = Submitted(proc.stdout)
    points, (aggregate,) = s.stages["sweep-point-fail"], s.stages["aggregate"]
    assert [status_of(conn, r) for r in points] == ["succeeded", "succeeded", "failed", "succeeded", "succeeded"]
    _, end = only_event(conn, aggregate, "RunFinished")
    assert end["state"] == "dependency_failed" and points[2] in end["reason"], end
    assert events_of(conn, aggregate, "RunSubmitted") == []
    assert pipeline_status(conn, s.pipeline_id) == "failed"
    shown = run_cli(env, "sweep", "show", str(s.sweep_id), check=True).stdout
    assert shown.splitlines()[0].startswith(f"{s.sweep_id}  sweep-point-fail  failed")
    assert re.search(rf"^2\s+{points[2]}\s+failed\s+3", shown, re.M), shown


# ------------------------------------------------------- 11. evald by hand


def test_evald_once_evaluates_each_checkpoint_once_and_eval_ls_shows_metrics_by_step(
    conn: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    trained = run_cli(env, "run", str(DATA / "evals" / "train_alone.toml"), "--wait", check=True)
    train_run = re.search(r"^run_id: (\S+)$", trained.stdout, re.M).group(1)  # type: ignore[union-attr]
    policy = str(DATA / "evals" / "policies" / "every-step.toml")

    first = json.loads(run_cli(env, "evald", "once", policy, check=True).stdout)  # piped: the original's JSON
    assert {k: v for k, v in first.items() if k != "run_ids"} == {
        "considered": 3,
        "submitted": 3,
        "retried": 0,
        "skipped_existing": 0,
        "skipped_ineligible": 0,
        "skipped_exhausted": 0,
    }
    eval_runs = first["run_ids"]
    requested = conn.execute("SELECT data FROM events WHERE type = 'EvalRequested'").fetchall()
    assert sorted(r[0]["run_id"] for r in requested) == sorted(eval_runs)
    assert sorted(r[0]["step"] for r in requested) == [1, 2, 3]

    before = event_count(conn)
    second = json.loads(run_cli(env, "evald", "once", policy, check=True).stdout)
    assert (second["considered"], second["submitted"], second["skipped_existing"]) == (3, 0, 3)
    assert event_count(conn) == before

    run_cli(env, "agent", "--drain", check=True, timeout=60)
    assert {status_of(conn, r) for r in eval_runs} == {"succeeded"}

    listed = run_cli(env, "eval", "ls", check=True).stdout.splitlines()
    assert listed[0].split() == ["POLICY", "TRAIN", "RUN", "STEP", "score", "EVAL", "RUN", "STATE"]
    rows = [line.split() for line in listed[1:]]
    assert [(r[0], r[1], r[2], r[3], r[5]) for r in rows] == [
        ("every-step", train_run, str(step), f"{step / 10:.6g}", "succeeded") for step in (1, 2, 3)
    ]
    shown = run_cli(env, "eval", "show", train_run, check=True).stdout.splitlines()
    assert shown[0] == f"{train_run}: 3 eval(s)"
    assert [line.split() for line in shown[2:]] == [
        [str(step), "every-step", "succeeded", f"score={step / 10:.4g}"] for step in (1, 2, 3)
    ]


# ------------------------------------- identical pipelines in flight at once


def test_a_second_identical_pipeline_in_flight_waits_on_the_first_ones_stages_and_succeeds(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    with agent(env, tmp_path / "agent.log", PIPELINE_GATE=str(gate)) as worker:
        agent_id_of(conn, worker)
        first = run_pipeline(env, DATA / "chain" / "pipeline.toml")
        wait_for(lambda: status_of(conn, first.run("b")) == "running", "the first pipeline's b to run")
        second = run_pipeline(env, DATA / "chain" / "pipeline.toml")
        wait_for(lambda: status_of(conn, second.run("b")) == "awaiting_peer", "the second b to wait on the first")
        assert run_row(conn, second.run("b"))["producer_run_id"] == first.run("b")
        gate.touch()
        assert pipeline_ended(conn, first.pipeline_id) == "succeeded"
        assert pipeline_ended(conn, second.pipeline_id) == "succeeded"
    assert_each_run_submitted_once(conn, first.run_ids + second.run_ids)
    for run_id in second.run_ids:
        assert events_of(conn, run_id, "RunStarted") == [], f"{run_id} ran a job its twin already ran"
    assert artifacts_read(conn, second.run("c")) == artifacts_read(conn, first.run("c"))
