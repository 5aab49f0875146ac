"""The local agent packs jobs by their GPUs (declared in cluster.toml ``[local]``), gives each job its own
devices, does not starve a big job behind small ones, and every local submission (`run`, `run-pipeline`,
`run-sweep`, `evald once`) refuses a job that can never fit."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import agent, run_cli, wait_for

GPUS = ["0", "1", "2", "3"]
# each job records the devices it sees (or "unset") and when it started and ended
STAMP = (
    'printf "%s %s\\n" "${CUDA_VISIBLE_DEVICES-unset}" "$(date +%s.%N)" > "$LABCTL_RUN_DIR/stamp"; '
    'sleep 2; date +%s.%N >> "$LABCTL_RUN_DIR/stamp"'
)


def write_cluster(tmp_path: Path, cpus: int = 16, dispatch: dict[str, Any] | None = None) -> Path:
    home = tmp_path / "store"
    kinds = ("checkpoint", "dataset", "eval_result", "model", "external")
    outputs = ("checkpoint_stream", "checkpoint", "dataset", "eval_result", "model")
    lines = ['name = "packing-test"', "", "[filesystem]", f'runs_base = "{home}/runs"', ""]
    lines += ["[filesystem.artifact_roots]", *(f'{k} = "{home}/artifacts/{k}"' for k in kinds), ""]
    lines += ["[filesystem.output_roots]", *(f'{k} = "{home}/outputs/{k}"' for k in outputs), ""]
    lines += [
        "[scheduler]",
        'kind = "local"',
        "",
        "[local]",
        f"cpus = {cpus}",
        'mem = "64GB"',
        f"gpus = {json.dumps(GPUS)}",
    ]
    if dispatch:
        lines += ["", "[dispatch]", *(f"{k} = {json.dumps(v)}" for k, v in dispatch.items())]
    path = tmp_path / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def recipe(tmp_path: Path, gpus: int) -> Path:
    path = tmp_path / f"gpus{gpus}.toml"
    path.write_text(
        f'name = "gpus{gpus}"\ncommand = ["bash", "-c", {json.dumps(STAMP)}]\n'
        f'[params]\ni = 0\n[resources]\ngpus = {gpus}\ncpus = 1\nmem = "1GB"\n'
    )
    return path


def submit(env: dict[str, str], path: Path, i: int) -> str:
    proc = run_cli(env, "run", str(path), "--set", f"params.i={i}", check=True)
    found = re.search(r"^run_id: (\S+)$", proc.stdout, re.M)
    assert found, proc.stdout
    return found.group(1)


def stamp(conn: psycopg.Connection[Any], run_id: str) -> tuple[list[str] | None, float, float]:
    """(devices the job saw, None if CUDA_VISIBLE_DEVICES was unset; start; end)."""
    row = conn.execute("SELECT run_dir FROM runs WHERE id = %s", (run_id,)).fetchone()
    assert row is not None
    first, end = (Path(row[0]) / "stamp").read_text().splitlines()
    devices, start = first.split(" ")
    return (None if devices == "unset" else [d for d in devices.split(",") if d]), float(start), float(end)


def test_agent_gives_each_job_its_own_gpus_and_does_not_starve_a_two_gpu_job(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, "LABCTL_CLUSTER": str(write_cluster(tmp_path))}
    one, two, none = recipe(tmp_path, 1), recipe(tmp_path, 2), recipe(tmp_path, 0)
    # three 1-GPU jobs take three of the four GPUs; the 2-GPU job queued next must wait for two to free,
    # and the 1-GPU jobs queued after it must not take the GPU it is waiting for
    first = [submit(env, one, i) for i in range(3)]
    big = submit(env, two, 10)
    later = [submit(env, one, i) for i in range(3, 6)] + [submit(env, two, 11), submit(env, none, 20)]
    runs = [*first, big, *later]
    wanted = dict.fromkeys(runs, 1) | {big: 2, later[-2]: 2, later[-1]: 0}

    with agent(env, tmp_path / "agent.log", "--slots", "8"):

        def all_ended() -> bool:
            rows = conn.execute("SELECT status FROM runs WHERE id = ANY(%s)", (runs,)).fetchall()
            return len(rows) == len(runs) and all(s in ("succeeded", "failed", "cancelled") for (s,) in rows)

        wait_for(all_ended, "every job to end", timeout=180)
    states = dict(conn.execute("SELECT id, status FROM runs WHERE id = ANY(%s)", (runs,)).fetchall())
    assert set(states.values()) == {"succeeded"}, (states, (tmp_path / "agent.log").read_text())

    stamps = {r: stamp(conn, r) for r in runs}
    for run_id, (devices, _, _) in stamps.items():
        assert devices is not None, f"{run_id}: CUDA_VISIBLE_DEVICES unset"
        assert len(set(devices)) == len(devices) == wanted[run_id], (run_id, devices)
        assert set(devices) <= set(GPUS)
        recorded = conn.execute(
            "SELECT data FROM events WHERE stream = %s AND type = 'JobSubmitted'", (f"run-{run_id}",)
        ).fetchone()
        assert recorded is not None and recorded[0].get("gpus", []) == devices
    # no two jobs that ran at the same time shared a device
    for a in runs:
        for b in runs:
            (da, sa, ea), (db, sb, eb) = stamps[a], stamps[b]
            if a < b and sa < eb and sb < ea:
                assert not set(da or []) & set(db or []), f"{a} {da} and {b} {db} overlapped on a GPU"
    # the 2-GPU job was given its slot before any GPU job queued after it (the 0-GPU one may go ahead: it
    # takes no GPU). The agent's claims say in which order it chose; the jobs' own clocks do not, since a
    # tick's jobs start together and a later one's process may stamp first by a few milliseconds.
    claimed = dict(
        conn.execute(
            "SELECT data ->> 'run_id', position FROM events WHERE type = 'RunClaimed' AND data ->> 'run_id' = ANY(%s)",
            (runs,),
        ).fetchall()
    )
    assert all(claimed[big] < claimed[r] for r in later[:-1]), {r: claimed.get(r) for r in [big, *later]}
    shown = json.loads(run_cli(env, "show", big, check=True).stdout)
    assert shown["gpus"] == stamps[big][0]


def test_run_refuses_a_job_that_can_never_fit_and_records_nothing(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, "LABCTL_CLUSTER": str(write_cluster(tmp_path))}
    run_cli(env, "run", str(recipe(tmp_path, 1)), check=True)  # the database is set up and takes runs
    before = conn.execute("SELECT count(*) FROM events").fetchone()
    proc = run_cli(env, "run", str(recipe(tmp_path, 9)))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        "labctl: error: recipe gpus9 needs 9 GPUs; this machine has 4 (cluster.toml [local] gpus)"
    ], proc.stderr
    assert conn.execute("SELECT count(*) FROM events").fetchone() == before


def refused(conn: psycopg.Connection[Any], env: dict[str, str], *args: str) -> str:
    """Run ``labctl ARGS``, which must be refused with exit 2 and one line, appending nothing; the line."""
    before = conn.execute("SELECT count(*) FROM events").fetchone()
    proc = run_cli(env, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stdout + proc.stderr
    assert conn.execute("SELECT count(*) FROM events").fetchone() == before
    return proc.stderr.strip()


def big_recipe(tmp_path: Path, name: str, body: str = "") -> Path:
    """A recipe needing 64 CPUs (the test machine declares 16) writing one output ``out``."""
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\ncommand = ["bash", "-c", "mkdir -p $1 && touch $1/DONE", "x", "{{outputs.out.path}}"]\n'
        f"{body}\n[resources]\ncpus = 64\n"
        f'[outputs.out]\ntype = "dataset"\nmarker = "DONE"\nalias = "{name}-{{run.id}}"\n'
    )
    return path


def test_run_pipeline_refuses_a_stage_that_can_never_fit_before_recording_the_pipeline(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, "LABCTL_CLUSTER": str(write_cluster(tmp_path))}
    run_cli(env, "run", str(recipe(tmp_path, 1)), check=True)  # the database is set up and takes runs
    (tmp_path / "prep.toml").write_text(
        'name = "prep"\ncommand = ["bash", "-c", "mkdir -p $1 && touch $1/DONE", "x", "{outputs.data.path}"]\n'
        '[outputs.data]\ntype = "dataset"\nmarker = "DONE"\nalias = "prep-{run.id}"\n'
    )
    # train waits for prep: it is refused although nothing would submit it until prep succeeded
    big_recipe(tmp_path, "train", '[inputs.data]\ntype = "stage"\nstage = "prep"\nrole = "data"')
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text('name = "p"\n[stages.prep]\nrecipe = "prep.toml"\n[stages.train]\nrecipe = "train.toml"\n')
    line = refused(conn, env, "run-pipeline", str(pipeline))
    assert line == "labctl: error: stage train needs 64 CPUs; this machine has 16 (cluster.toml [local] cpus)"
    # SLURM would run it: the check is the local machine's only
    assert conn.execute("SELECT count(*) FROM pipelines").fetchone() == (0,)


def test_run_sweep_refuses_points_that_can_never_fit_before_recording_the_sweep(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, "LABCTL_CLUSTER": str(write_cluster(tmp_path))}
    run_cli(env, "run", str(recipe(tmp_path, 1)), check=True)
    sweep = big_recipe(tmp_path, "wide", '[args]\ni = "0"\n[sweep]\narg = "i"\nstart = 0\nend = 4')
    line = refused(conn, env, "run-sweep", str(sweep))
    assert line == (
        "labctl: error: every point of sweep wide (0..4) needs 64 CPUs; this machine has 16 (cluster.toml [local] cpus)"
    )
    assert conn.execute("SELECT count(*) FROM sweeps").fetchone() == (0,)


def test_evald_once_refuses_a_policy_whose_evals_can_never_fit(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, "LABCTL_CLUSTER": str(write_cluster(tmp_path))}
    trained = tmp_path / "train.toml"
    trained.write_text(
        'name = "train"\ncommand = ["bash", "-c", "mkdir -p $1/step1 && touch $1/step1/DONE", "t", '
        '"{outputs.ckpts.path}"]\n'
        '[outputs.ckpts]\ntype = "checkpoint_stream"\nmarker = "DONE"\nalias = "ckpts-{run.id}"\n'
    )
    run_cli(env, "run", str(trained), "--wait", check=True)
    assert conn.execute("SELECT count(*) FROM artifacts WHERE kind = 'checkpoint'").fetchone() == (1,)
    big_recipe(tmp_path, "score", '[inputs.checkpoint]\ntype = "checkpoint"')
    policy = tmp_path / "policy.toml"
    policy.write_text('name = "every"\nrecipe = "score.toml"\n[applies_to]\ntype = "checkpoint"\n')
    line = refused(conn, env, "evald", "once", str(policy))
    assert line == (
        "labctl: error: eval policy every (recipe score) needs 64 CPUs; this machine has 16 (cluster.toml [local] cpus)"
    )
    assert conn.execute("SELECT count(*) FROM evals").fetchone() == (0,)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin two jobs apart")
def test_jobs_are_pinned_to_cpus_of_their_own(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, "LABCTL_CLUSTER": str(write_cluster(tmp_path, cpus=2))}
    path = tmp_path / "cpus.toml"
    record = 'grep Cpus_allowed_list /proc/self/status > "$LABCTL_RUN_DIR/cpus"; sleep 1'
    path.write_text(
        f'name = "cpus"\ncommand = ["bash", "-c", {json.dumps(record)}]\n[params]\ni = 0\n[resources]\ncpus = 1\n'
    )
    runs = [submit(env, path, i) for i in range(2)]
    with agent(env, tmp_path / "agent.log"):
        wait_for(
            lambda: (
                {s for (s,) in conn.execute("SELECT status FROM runs WHERE id = ANY(%s)", (runs,))} == {"succeeded"}
            ),
            "both jobs to succeed",
            timeout=120,
        )
    seen = []
    for run_id in runs:
        row = conn.execute("SELECT run_dir FROM runs WHERE id = %s", (run_id,)).fetchone()
        assert row is not None
        seen.append((Path(row[0]) / "cpus").read_text().split()[-1])
    # each ran on exactly one CPU (a single id, no range or list)
    assert all(c.isdigit() for c in seen), seen


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one of them")
def test_a_process_started_pinned_runs_on_its_cpus_from_its_start_and_its_starter_is_unpinned_after() -> None:
    from labctl.packing import pinned

    before = os.sched_getaffinity(0)
    cpu = max(before)
    with pinned([cpu]):
        # the first thing the process does is read its own affinity: nothing set it after it started
        seen = subprocess.run(["grep", "Cpus_allowed_list", "/proc/self/status"], capture_output=True, text=True)
    assert seen.stdout.split()[-1] == str(cpu)
    assert os.sched_getaffinity(0) == before


def test_the_agents_evald_skips_a_policy_that_can_never_fit_with_one_warning_and_runs_the_others(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    evals = Path(__file__).parent / "data" / "pipelines" / "evals"
    policies = tmp_path / "policies"
    policies.mkdir()
    big_recipe(tmp_path, "score", '[inputs.checkpoint]\ntype = "checkpoint"')
    (policies / "every.toml").write_text(
        'name = "every"\nrecipe = "../score.toml"\n[applies_to]\ntype = "checkpoint"\n'
    )
    (policies / "fits.toml").write_text(
        f'name = "fits"\nrecipe = "{evals / "eval.toml"}"\n[applies_to]\ntype = "checkpoint"\n'
    )
    cluster = write_cluster(tmp_path, dispatch={"policies_dir": str(policies), "evald_interval_secs": 1})
    env = {**env, "LABCTL_CLUSTER": str(cluster)}
    run_cli(env, "run", str(evals / "train_alone.toml"), "--wait", check=True)  # three checkpoints
    log = tmp_path / "agent.log"
    with agent(env, log):

        def evaluated() -> int:
            row = conn.execute("SELECT count(*) FROM evals WHERE recorded_at IS NOT NULL").fetchone()
            return int(row[0]) if row else 0

        wait_for(lambda: evaluated() == 3, "the fitting policy to evaluate the three checkpoints", timeout=120)
    text = log.read_text()
    skipped = [line for line in text.splitlines() if "skipping eval policy every" in line]
    why = "needs 64 CPUs; this machine has 16 (cluster.toml [local] cpus)"
    assert len(skipped) == 1 and skipped[0].endswith(f"evald: skipping eval policy every (recipe score) {why}"), text
    assert "Traceback" not in text and "reactor evald failed" not in text, text
    policies_asked = {p for (p,) in conn.execute("SELECT DISTINCT policy FROM evals")}
    assert policies_asked == {"fits"}


def test_an_agent_claims_past_its_room_the_younger_jobs_that_fit_beside_one_that_does_not(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labctl.agent import Agent
    from tests.test_agent_batches import app_for

    env = {**env, "LABCTL_CLUSTER": str(write_cluster(tmp_path))}
    three, none = recipe(tmp_path, 3), recipe(tmp_path, 0)
    # two slots: the two oldest are all the agent has room for, and the second cannot run beside the first
    first, second, third = submit(env, three, 1), submit(env, three, 2), submit(env, none, 3)
    app = app_for(env, monkeypatch)
    agent = Agent(app, slots=2)
    try:
        assert agent.claim()
        claimed = [c.run_id for c in agent.jobs.queue]
        assert claimed == [first, third]  # the GPU-less job goes ahead; the 3-GPU one waits for its GPUs
        assert [c.need.gpus for c in agent.jobs.queue] == [3, 0]
        assert dict(conn.execute("SELECT id, status FROM runs WHERE agent_id IS NULL").fetchall()) == {
            second: "submitted"
        }
    finally:
        app.close()
