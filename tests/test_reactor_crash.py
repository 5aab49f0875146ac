"""Every reactor, killed between its effect and the record that the effect happened (issue 14).

A real ``labctl agent`` subprocess runs with one crash point installed (this
module run as a script: ``python -m tests.test_reactor_crash POINT ARG agent``);
at that point it SIGKILLs itself, as a machine or OOM kill would. A fresh,
unmodified agent (or reactor) then takes over, and each test asserts what a
user sees is what an uncrashed run gives: each run submitted once, each eval
requested and recorded once, one SLURM job, the same held jobs, the same files.

- advancer, evald: the effect is appending events. The page's appends and the
  reactor's checkpoint commit in one transaction, so the crash leaves neither
  (asserted right after the kill) and the fresh agent handles the page again.
- SLURM submission: sbatch cannot share a transaction. Killed after sbatch and
  before ``JobSubmitted``, the fresh agent finds the job by the run id it
  carries instead of submitting it again.
- ``[dispatch.throttle]``: killed halfway through holding jobs, the fresh pass
  decides from SLURM's queue (held jobs are not eligible) and holds only the rest.
- ``[dispatch.gc]``: killed halfway through deleting a ``source/`` snapshot,
  the fresh pass skips what is gone and finishes what is not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import psycopg
import pytest

from labctl.app import App
from tests.compat.test_config_honoured import _held, begin_later_jobs  # noqa: F401  (the fixture)
from tests.compat.test_flags_commands import _ended_run_with_a_source_snapshot
from tests.conftest import REPO, agent, run_cli, wait_for
from tests.test_pipelines_acceptance import (
    DATA,
    assert_each_run_submitted_once,
    pipeline_ended,
    run_pipeline,
    status_of,
    write_cluster,
)
from tests.test_slurm_runs import DATA as SLURM_DATA
from tests.test_slurm_runs import Lab, assert_one_job_carrying, lab, squeue_carrying  # noqa: F401  (the fixture)

#: how long a crashing agent may take to reach its crash point (a few tiny local or SLURM jobs)
CRASH_DEADLINE = 120.0


# ------------------------------------------------------------ crash points (run in the agent)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _crash_before_checkpoint(spec: str) -> None:
    """``REACTOR:TYPE[:STREAM]``: that reactor dies just before writing its checkpoint once an event
    of TYPE (in STREAM) exists, as it sees the log: its own uncommitted appends included.

    The reactors' full passes are off here, so the effect can come only from handling the events
    after the checkpoint.
    """
    from labctl.reactors import base
    from labctl.reactors.advancer import Advancer
    from labctl.reactors.evald import Evald

    reactor, type_, stream = [*spec.split(":"), ""][:3]
    write = base.set_checkpoint

    def set_checkpoint(conn: psycopg.Connection[Any], name: str, position: int) -> None:
        if name.split(":")[0] == reactor:
            row = conn.execute(
                "SELECT count(*) FROM labctl.events WHERE type = %s AND (%s = '' OR stream = %s)",
                (type_, stream, stream),
            ).fetchone()
            if row and row[0]:
                _die()
        write(conn, name, position)

    base.set_checkpoint = set_checkpoint
    for cls in (Advancer, Evald):
        cls.full_pass = lambda self: False  # type: ignore[method-assign]
    # The agent submits the children its own jobs' ends release in the ends' transaction; here those
    # ends reach the advancer only through the log, as the ends SLURM or another agent records do.
    from labctl.agent import Agent

    Agent.advance_ended = lambda self, ended: None  # type: ignore[method-assign]


def _crash_after_sbatch(_: str) -> None:
    """The SLURM reactor dies after sbatch answered, before it records ``JobSubmitted``."""
    from labctl import slurm_runs

    slurm_runs._record_jobs = lambda *args, **kwargs: _die()  # type: ignore[assignment]


def _crash_holding(_: str) -> None:
    """The throttle dies after holding the first of the jobs it meant to hold."""
    from labctl.executors.slurm import SlurmExecutor

    hold = SlurmExecutor.hold

    def hold_one(self: SlurmExecutor, job_ids: list[str]) -> None:
        hold(self, job_ids[:1])
        _die()

    SlurmExecutor.hold = hold_one  # type: ignore[method-assign,assignment]


def _crash_deleting(_: str) -> None:
    """Source gc deletes the first snapshot, then dies having deleted one file of the second."""
    import shutil

    from labctl import snapshots

    calls = []

    def rmtree(path: Path) -> None:
        calls.append(path)
        if len(calls) == 1:
            shutil.rmtree(path)
            return
        next(p for p in sorted(Path(path).rglob("*")) if p.is_file()).unlink()
        _die()

    snapshots.shutil = types.SimpleNamespace(rmtree=rmtree)  # type: ignore[attr-defined]


def _crash_recording_ends(_: str) -> None:
    """The agent dies after the jobs that ended in a tick had their outputs moved into the store,
    before the transaction that records their ends."""
    from labctl import finish

    finish.retry_on_conflict = lambda *args, **kwargs: _die()  # type: ignore[assignment]


def _crash_advancing_ends(_: str) -> None:
    """The agent dies inside the transaction that records its jobs' ends, once the children those ends
    release were submitted there too, before it commits."""
    from labctl.agent import Agent

    advance = Agent.advance_ended

    def advance_then_die(self: Agent, ended: list[Any]) -> None:
        advance(self, ended)
        if ended:
            _die()

    Agent.advance_ended = advance_then_die  # type: ignore[method-assign]


def _crash_holding_claims_ahead(_: str) -> None:
    """The agent dies once every slot runs a job and it holds runs claimed ahead of them, not started."""
    import time

    from labctl.agent_jobs import Jobs

    add = Jobs.add

    def add_then_die(self: Jobs, claimed: list[Any]) -> None:
        add(self, claimed)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with self.lock:
                if not self.queue:
                    return  # every claimed run started: no run held ahead yet
                if len(self.running) >= self.slots:
                    _die()
            time.sleep(0.01)

    Jobs.add = add_then_die  # type: ignore[method-assign]


CRASH_POINTS = {
    "claimed-ahead": _crash_holding_claims_ahead,
    "checkpoint": _crash_before_checkpoint,
    "ends": _crash_recording_ends,
    "advance-ends": _crash_advancing_ends,
    "sbatch": _crash_after_sbatch,
    "hold": _crash_holding,
    "rmtree": _crash_deleting,
}


def crash_agent(env: dict[str, str], log: Path, point: str, arg: str = "", *args: str) -> None:
    """Run ``labctl agent ARGS`` with a crash point until it kills itself there."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.test_reactor_crash", point, arg, "agent", *args],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        code = proc.wait(CRASH_DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the agent never reached its crash point {point} {arg}:\n{log.read_text()[-3000:]}")
    assert code == -signal.SIGKILL, f"the agent exited {code} instead of dying at {point}:\n{log.read_text()[-3000:]}"


# ------------------------------------------------------------------ helpers


def types_of(conn: psycopg.Connection[Any], stream: str) -> list[str]:
    rows = conn.execute("SELECT type FROM events WHERE stream = %s ORDER BY version", (stream,)).fetchall()
    return [r[0] for r in rows]


def scalar(conn: psycopg.Connection[Any], query: str, *params: Any) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None and row[0] is not None, query
    return int(row[0])


def reactor_checkpoint(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute("SELECT position FROM reactor_checkpoints WHERE name = %s", (name,)).fetchone()
    return int(row[0]) if row else 0


def app_for(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> App:
    """An in-process App seeing what ``labctl`` run with ``env`` sees."""
    from labctl.app import open_app

    with monkeypatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        return open_app()


def audit_clean(env: dict[str, str]) -> None:
    """The read models are exactly what a rebuild from the log gives."""
    proc = run_cli(env, "audit", "verify")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ the agent's own jobs


def test_agent_killed_between_its_jobs_ends_and_their_record_ends_each_once_on_restart_and_keeps_the_outputs(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    """Jobs that ended in one tick have their outputs stored together, then one transaction records
    their ends; killed in between, a fresh agent ends each run once (``node_fail``: the exit was never
    recorded) and the bytes the jobs wrote are still at their output paths."""
    from tests.test_agent_batches import GATED, statuses, submit
    from tests.test_local_packing import write_cluster as room_for_jobs

    env = {**env, "LABCTL_CLUSTER": str(room_for_jobs(tmp_path)), "LABCTL_AGENT_STALE_SECONDS": "2"}
    recipe = tmp_path / "gated.toml"
    recipe.write_text(GATED)
    gate = tmp_path / "gate"
    gate.touch()  # each job ends as soon as it starts
    runs = {i: submit(env, recipe, f"params.gate={gate}", f"params.i={2 * i}") for i in range(3)}
    outputs = {
        i: Path(
            scalar_text(
                conn,
                "SELECT data->'outputs'->0->>'path' FROM events WHERE stream = %s AND type = 'RunSubmitted'",
                f"run-{r}",
            )
        )
        for i, r in runs.items()
    }

    crash_agent(env, tmp_path / "crashed.log", "ends", "", "--slots", "3")

    # nothing recorded the ends (a job that started and ended since the agent last recorded has its start
    # in the ends' transaction too: "submitted"), yet the first tick's outputs moved into the store
    assert set(statuses(conn, list(runs.values())).values()) <= {"submitted", "running"}
    assert any(outputs[i].is_symlink() for i in runs)

    with agent(env, tmp_path / "fresh.log"):
        wait_for(
            lambda: not {"submitted", "running"} & set(statuses(conn, list(runs.values())).values()),
            "the runs ended",
            timeout=60,
        )
    assert set(statuses(conn, list(runs.values())).values()) == {"node_fail"}
    for i, run_id in runs.items():
        assert types_of(conn, f"run-{run_id}").count("RunFinished") == 1
        assert (outputs[i] / "v").read_text().strip() == str(2 * i)  # in the store or still in place
    audit_clean(env)


def test_agent_killed_before_committing_its_jobs_ends_with_the_children_they_release_keeps_neither(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    """A tick's ends and the children they release commit in one transaction: killed before it commits,
    neither the parent's end nor the child's submission is kept; a fresh agent ends the parent once
    (``node_fail``: its exit was never recorded), and the child, never submitted, never runs."""
    env = {**env, "LABCTL_AGENT_STALE_SECONDS": "2"}
    p = run_pipeline(env, DATA / "chain" / "pipeline.toml")
    a, b, c = p.run("a"), p.run("b"), p.run("c")

    crash_agent(env, tmp_path / "crashed.log", "advance-ends")

    # The parent was claimed and its end was lost; its start too if the job started and ended before one
    # tick recorded it (a tick's starts go in its ends' append).
    kinds = types_of(conn, f"run-{a}")
    assert kinds.count("RunClaimed") == 1 and "RunFinished" not in kinds, kinds
    assert status_of(conn, a) in ("submitted", "running")
    assert types_of(conn, f"run-{b}") == ["RunPending"]

    with agent(env, tmp_path / "fresh.log"):
        assert pipeline_ended(conn, p.pipeline_id, timeout=60) == "failed"
    assert status_of(conn, a) == "node_fail"
    assert (status_of(conn, b), status_of(conn, c)) == ("dependency_failed", "dependency_failed")
    assert types_of(conn, f"run-{a}").count("RunFinished") == 1
    assert "RunSubmitted" not in types_of(conn, f"run-{b}")
    audit_clean(env)


def test_agent_killed_holding_runs_claimed_ahead_ends_each_claimed_run_once_after_a_fresh_agent(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    """The agent claims runs ahead of its free slots (their claims committed) and starts them as slots
    free up. Killed while it holds such runs: a fresh agent ends every run the dead one claimed exactly
    once (``node_fail``: neither the ahead ones nor the running ones had their end recorded), never starts
    a run that was claimed ahead, and runs what is submitted after."""
    from tests.test_agent_batches import GATED, statuses, submit
    from tests.test_local_packing import write_cluster as room_for_jobs

    env = {**env, "LABCTL_CLUSTER": str(room_for_jobs(tmp_path)), "LABCTL_AGENT_STALE_SECONDS": "2"}
    recipe = tmp_path / "gated.toml"
    recipe.write_text(GATED)
    # two jobs that end at once first: the agent claims ahead once it has seen its jobs are short
    for i in range(2):
        submit(env, recipe, f"params.gate={recipe}", f"params.i={20 + 2 * i}")
    gate = tmp_path / "gate"  # absent: the jobs wait, so both slots stay busy
    runs = [submit(env, recipe, f"params.gate={gate}", f"params.i={2 * i}") for i in range(4)]

    crash_agent(env, tmp_path / "crashed.log", "claimed-ahead", "", "--slots", "2")

    claimed = scalar(
        conn, "SELECT count(*) FROM events WHERE type = 'RunClaimed' AND data ->> 'run_id' = ANY(%s)", runs
    )
    assert claimed == 4  # two running, two held ahead
    assert set(statuses(conn, runs).values()) <= {"submitted", "running"}
    gate.touch()  # the dead agent's jobs (their processes live on) may end now

    later = submit(env, recipe, f"params.gate={gate}", "params.i=8")
    with agent(env, tmp_path / "fresh.log", "--slots", "2"):
        wait_for(lambda: statuses(conn, [*runs, later])[later] == "succeeded", "the later run to succeed", timeout=60)
        wait_for(lambda: set(statuses(conn, runs).values()) == {"node_fail"}, "the dead agent's runs ended", timeout=60)
    for run_id in runs:
        kinds = types_of(conn, f"run-{run_id}")
        assert kinds.count("RunClaimed") == 1 and kinds.count("RunFinished") == 1, kinds
        assert kinds.count("JobSubmitted") <= 1, kinds
    started = [r for r in runs if "JobSubmitted" in types_of(conn, f"run-{r}")]
    assert len(started) <= 2  # the runs held ahead never started
    audit_clean(env)


def scalar_text(conn: psycopg.Connection[Any], query: str, *params: Any) -> str:
    row = conn.execute(query, params).fetchone()
    assert row is not None and row[0] is not None, query
    return str(row[0])


# ------------------------------------------------------------------ advancer


def test_advancer_killed_before_its_checkpoint_leaves_no_submission_and_the_child_runs_once(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    p = run_pipeline(env, DATA / "chain" / "pipeline.toml")
    a, b, c = p.run("a"), p.run("b"), p.run("c")

    crash_agent(env, tmp_path / "crashed.log", "checkpoint", f"advancer:RunSubmitted:run-{b}")

    # a ended and the advancer submitted b, then died: the submission and the checkpoint went together.
    assert status_of(conn, a) == "succeeded"
    assert types_of(conn, f"run-{b}") == ["RunPending"]
    assert status_of(conn, b) == "created"
    a_ended = scalar(conn, "SELECT position FROM events WHERE stream = %s AND type = 'RunFinished'", f"run-{a}")
    assert reactor_checkpoint(conn, "advancer:alice") < a_ended

    with agent(env, tmp_path / "fresh.log"):
        assert pipeline_ended(conn, p.pipeline_id, timeout=60) == "succeeded"

    assert_each_run_submitted_once(conn, [a, b, c])
    assert {status_of(conn, r) for r in (a, b, c)} == {"succeeded"}
    out = conn.execute(
        "SELECT a.path FROM run_outputs o JOIN artifacts a ON a.id = o.artifact_id WHERE o.run_id = %s", (c,)
    ).fetchone()
    assert out is not None
    assert (Path(out[0]) / "data.txt").read_text().split() == ["a", "b", "c"]
    audit_clean(env)


def test_advancer_losing_its_connection_halfway_through_a_page_commits_none_of_it(
    conn: psycopg.Connection[Any],
    server_url: str,
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection dies after the page's submissions were appended, before its checkpoint: the
    submissions are not kept without the checkpoint, nor retried on a new connection outside the page's
    transaction. (b and c are submitted together, in one append: ``submit_many``.)"""
    import projections
    from labctl.reactors.advancer import Advancer

    p = run_pipeline(env, DATA / "diamond" / "pipeline.toml")
    a, b, c = p.run("a"), p.run("b"), p.run("c")
    # An agent runs a, then dies as its advancer submits b: a has ended, b and c wait.
    crash_agent(env, tmp_path / "crashed.log", "checkpoint", f"advancer:RunSubmitted:run-{b}")
    assert (status_of(conn, b), status_of(conn, c)) == ("created", "created")
    before = reactor_checkpoint(conn, "advancer:alice")

    app = app_for(env, monkeypatch)
    record = projections.record
    calls = []

    def record_then_lose_the_connection(on: psycopg.Connection[Any], *args: Any, **kwargs: Any) -> list[Any]:
        calls.append(on)
        stored = record(on, *args, **kwargs)
        if len(calls) == 1:  # b's and c's submissions are in; the checkpoint is next
            with psycopg.connect(server_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (on.info.backend_pid,))
        return stored

    try:
        with monkeypatch.context() as patch:
            patch.setattr(projections, "record", record_then_lose_the_connection)
            advancer = Advancer(app, "alice")
            advancer.next_full_pass = float("inf")  # only the page after the checkpoint, in its transaction
            with pytest.raises(psycopg.OperationalError):
                advancer.step()
            advancer.close()
        assert (types_of(conn, f"run-{b}"), types_of(conn, f"run-{c}")) == (["RunPending"], ["RunPending"])
        assert len(calls) == 1  # the submissions were not tried again on a new connection
        assert reactor_checkpoint(conn, "advancer:alice") == before

        fresh = Advancer(app, "alice")  # reconnects; handles the page again
        wait_for(fresh.leadership.held, "the advancer's leadership")
        assert fresh.step()
        fresh.close()
    finally:
        app.close()
    assert_each_run_submitted_once(conn, [a, b, c])
    assert reactor_checkpoint(conn, "advancer:alice") > before


# ------------------------------------------------------------------ evald


@pytest.mark.parametrize(
    ("effect", "trigger"),
    [
        # requesting the evals of new checkpoints (on ArtifactRegistered)
        ("EvalRequested", "SELECT min(position) FROM events WHERE type = 'ArtifactRegistered'"),
        # recording an eval run's metrics (on its RunFinished)
        (
            "EvalRecorded",
            "SELECT min(e.position) FROM events e JOIN evals v ON e.stream = 'run-' || v.run_id "
            "WHERE e.type = 'RunFinished'",
        ),
    ],
)
def test_evald_killed_before_its_checkpoint_leaves_nothing_and_each_checkpoint_is_evaluated_once(
    conn: psycopg.Connection[Any], env: dict[str, str], home: Path, tmp_path: Path, effect: str, trigger: str
) -> None:
    cluster = write_cluster(tmp_path, home, policies_dir=str(DATA / "evals" / "policies"))
    env = {**env, "LABCTL_CLUSTER": str(cluster)}
    run_cli(env, "run", str(DATA / "evals" / "train_alone.toml"), check=True)

    # One job at a time, none claimed ahead: when it dies, the agent has no eval job in flight (that would
    # end node_fail).
    crashing = {**env, "LABCTL_AGENT_AHEAD_SECONDS": "0"}
    crash_agent(crashing, tmp_path / "crashed.log", "checkpoint", f"evald:{effect}", "--slots", "1")

    assert scalar(conn, "SELECT count(*) FROM runs WHERE status = 'running'") == 0
    assert scalar(conn, "SELECT count(*) FROM events WHERE type = %s", effect) == 0
    assert reactor_checkpoint(conn, "evald:alice") < scalar(conn, trigger)
    if effect == "EvalRequested":
        assert scalar(conn, "SELECT count(*) FROM runs") == 1  # no eval run was recorded either

    with agent(env, tmp_path / "fresh.log"):
        wait_for(
            lambda: scalar(conn, "SELECT count(*) FROM evals WHERE recorded_at IS NOT NULL") == 3,
            "three evals (one per checkpoint) to record metrics",
            timeout=60,
        )

    requested = conn.execute("SELECT stream, data FROM events WHERE type = 'EvalRequested'").fetchall()
    assert sorted(d["step"] for _, d in requested) == [1, 2, 3]
    assert len({s for s, _ in requested}) == 3  # one request per (checkpoint, eval recipe)
    eval_runs = [d["run_id"] for _, d in requested]
    assert_each_run_submitted_once(conn, eval_runs)
    assert {status_of(conn, r) for r in eval_runs} == {"succeeded"}
    recorded = conn.execute("SELECT stream, count(*) FROM events WHERE type = 'EvalRecorded' GROUP BY stream")
    assert sorted(n for _, n in recorded.fetchall()) == [1, 1, 1]
    metrics = conn.execute("SELECT step, metrics FROM evals ORDER BY step").fetchall()
    assert [(s, m["score"]) for s, m in metrics] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    audit_clean(env)


# ------------------------------------------------------------------ source gc


def _ended_runs_with_source_snapshots(env: dict[str, str], tmp_path: Path, n: int) -> tuple[Path, list[Path]]:
    """``n`` ended local runs of a recipe with a repo (so each run dir holds source/); cluster.toml, run dirs."""
    cluster, first = _ended_run_with_a_source_snapshot(env, tmp_path)
    run_dirs = [first]
    for _ in range(n - 1):
        run = ["--cluster", str(cluster), "run", str(tmp_path / "hello.toml"), "--no-cache", "--wait"]
        out = run_cli(env, *run, check=True).stdout
        run_dirs.append(Path(next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("run_dir: "))))
    return cluster, run_dirs


def files_under(run_dirs: list[Path]) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for d in run_dirs for p in sorted(d.rglob("*")) if p.is_file()}


def test_source_gc_killed_halfway_through_a_snapshot_finishes_it_and_keeps_everything_else(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    cluster, run_dirs = _ended_runs_with_source_snapshots(env, tmp_path, 3)
    sources = [d / "source" for d in run_dirs]
    kept = {k: v for k, v in files_under(run_dirs).items() if not any(k.startswith(f"{s}/") for s in sources)}
    logged = scalar(conn, "SELECT count(*) FROM events")
    with cluster.open("a") as f:
        f.write("[dispatch]\n[dispatch.gc]\ninterval_secs = 1\nmin_terminal_age_secs = 0\n")
    env = {**env, "LABCTL_CLUSTER": str(cluster)}

    crash_agent(env, tmp_path / "crashed.log", "rmtree")

    # the first snapshot is gone, the second lost one file, the third is untouched
    assert [s.exists() for s in sources] == [False, True, True]
    left = [sorted(str(p.relative_to(s)) for p in s.rglob("*") if p.is_file()) for s in sources[1:]]
    assert len(left[0]) == len(left[1]) - 1 and set(left[0]) < set(left[1])

    with agent(env, tmp_path / "fresh.log"):
        wait_for(lambda: not any(s.exists() for s in sources), "the fresh agent's source gc", timeout=60)

    assert files_under(run_dirs) == kept  # .lab/ (context, provenance, log) and outputs stay, byte for byte
    assert scalar(conn, "SELECT count(*) FROM events") == logged  # gc records nothing
    assert {status_of(conn, d.name) for d in run_dirs} == {"succeeded"}


# ------------------------------------------------------------------ SLURM


@pytest.mark.slurm
def test_slurm_reactor_killed_between_sbatch_and_recording_the_job_adopts_it_and_never_submits_again(
    lab: Lab,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from labctl.files import load_recipe
    from labctl.submit import apply_overrides, submit

    app = app_for(lab.env, monkeypatch)
    try:
        recipe_path = SLURM_DATA / "sleep.toml"
        recipe = apply_overrides(load_recipe(recipe_path), ["params.secs=2"])
        run_id = submit(app, recipe, recipe_path, executor="slurm").run_id  # queued for the agent to sbatch
    finally:
        app.close()

    crash_agent(lab.env, lab.directory / "crashed.log", "sbatch")

    assert lab.event_types(run_id)[-1] == "SubmissionIntended"
    assert lab.row(run_id)["job_id"] is None
    [job_id] = squeue_carrying(run_id)

    with agent(lab.env, lab.directory / "fresh.log"):
        wait_for(lambda: lab.status(run_id) == "succeeded", f"{run_id} to succeed", timeout=150)

    assert lab.row(run_id)["job_id"] == job_id
    assert lab.event_types(run_id).count("SubmissionIntended") == 1
    assert lab.event_types(run_id).count("JobSubmitted") == 1
    assert_one_job_carrying(run_id, job_id)


@pytest.mark.slurm
def test_dispatch_throttle_killed_halfway_through_holding_holds_only_the_rest(
    lab: Lab,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    begin_later_jobs: tuple[str, list[str]],  # noqa: F811
) -> None:
    from labctl.reactors.slurm import SlurmReactor

    name, ids = begin_later_jobs
    cluster = Path(lab.env["LABCTL_CLUSTER"])
    with cluster.open("a") as f:
        f.write(f'evald_interval_secs = 1\n[dispatch.throttle]\njob_name = "{name}"\nmax_concurrent = 1\n')

    crash_agent(lab.env, lab.directory / "crashed.log", "hold")

    assert _held(ids) == ids[:1]  # of the two it meant to hold (the first two in squeue's order), one

    app = app_for(lab.env, monkeypatch)
    try:
        for _ in range(2):  # a fresh reactor's pass, and another: the second changes nothing
            reactor = SlurmReactor(app, "fresh", 1.0, app.user)
            wait_for(reactor.leadership.held, "the dead agent's leadership to be released")
            reactor.step()
            reactor.close()
            assert _held(ids) == ids[:2]  # as an uncrashed pass leaves it: two held, one eligible
    finally:
        app.close()


# ------------------------------------------------------------------ the crashing agent


if __name__ == "__main__":
    point, arg, *argv = sys.argv[1:]
    CRASH_POINTS[point](arg)
    sys.argv = ["labctl", *argv]
    from labctl.entry import main

    main()
