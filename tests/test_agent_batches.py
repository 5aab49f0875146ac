"""The local agent claims, starts and ends jobs in batches: what was batched is still right run by run.

Jobs that end together are recorded in one transaction (``finish_runs``); runs chosen in one tick are
claimed together (``claim_many``) and their starts recorded together (``record_starts``).
A run that moved on meanwhile (cancelled, already ended) must not take the others down with it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import agent, run_cli, wait_for
from tests.test_local_packing import write_cluster

# Each job waits for the same gate file, so they all end within one agent tick once it appears;
# an odd i fails, an even i writes its output and succeeds.
GATED = """\
name = "gated"
command = [
    "bash", "-c",
    'while [ ! -e "$1" ]; do sleep 0.05; done; mkdir -p "$2"; echo "$3" > "$2/v"; touch "$2/DONE"; exit $(( $3 % 2 ))',
    "x", "{params.gate}", "{outputs.out.path}", "{params.i}",
]

[params]
gate = ""
i = 0

[outputs.out]
type = "dataset"
marker = "DONE"
alias = "gated-{params.i}"
"""


def submit(env: dict[str, str], path: Path, *sets: str) -> str:
    proc = run_cli(env, "run", str(path), *(a for s in sets for a in ("--set", s)), check=True)
    found = re.search(r"^run_id: (\S+)$", proc.stdout, re.M)
    assert found, proc.stdout
    return found.group(1)


def statuses(conn: psycopg.Connection[Any], run_ids: list[str]) -> dict[str, str]:
    return dict(conn.execute("SELECT id, status FROM runs WHERE id = ANY(%s)", (run_ids,)).fetchall())


def test_jobs_that_end_together_are_each_recorded_with_their_own_state_and_outputs(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, "LABCTL_CLUSTER": str(write_cluster(tmp_path))}  # room for six jobs at once
    recipe = tmp_path / "gated.toml"
    recipe.write_text(GATED)
    gate = tmp_path / "gate"
    runs = {i: submit(env, recipe, f"params.gate={gate}", f"params.i={i}") for i in range(6)}
    with agent(env, tmp_path / "agent.log", "--slots", "6"):
        wait_for(
            lambda: set(statuses(conn, list(runs.values())).values()) == {"running"},
            "all six jobs running",
            timeout=60,
        )
        gate.touch()
        wait_for(
            lambda: not {"running", "submitted"} & set(statuses(conn, list(runs.values())).values()),
            "all six ends recorded",
            timeout=60,
        )
    got = statuses(conn, list(runs.values()))
    assert got == {run_id: ("succeeded" if i % 2 == 0 else "failed") for i, run_id in runs.items()}
    # each success registered its own output (its own bytes, its own alias), each failure none
    for i, run_id in runs.items():
        outputs = conn.execute(
            "SELECT a.path FROM run_outputs o JOIN artifacts a ON a.id = o.artifact_id WHERE o.run_id = %s",
            (run_id,),
        ).fetchall()
        if i % 2:
            assert outputs == []
            continue
        [(path,)] = outputs
        assert (Path(path) / "v").read_text().strip() == str(i)
        producer = conn.execute(
            "SELECT a.producer_run_id FROM aliases al JOIN artifacts a ON a.id = al.artifact_id WHERE al.alias = %s",
            (f"gated-{i}",),
        ).fetchall()
        assert producer == [(run_id,)]
    # one RunFinished per run, however many ended in the same transaction
    ends = conn.execute(
        "SELECT stream, count(*) FROM events WHERE type = 'RunFinished' AND stream = ANY(%s) GROUP BY stream",
        ([f"run-{r}" for r in runs.values()],),
    ).fetchall()
    assert sorted(n for _, n in ends) == [1] * 6
    assert run_cli(env, "audit", "verify").returncode == 0


def app_for(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    from labctl.app import open_app

    with monkeypatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        return open_app()


def test_a_claim_batch_holding_a_run_cancelled_meanwhile_claims_the_others(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labctl import local_runs

    recipe = tmp_path / "gated.toml"
    recipe.write_text(GATED)
    runs = [submit(env, recipe, f"params.gate={tmp_path / 'never'}", f"params.i={i}") for i in range(3)]
    app = app_for(env, monkeypatch)
    try:
        queued = dict(local_runs.claimable(app, None, 10, app.user))
        assert set(queued) == set(runs)
        run_cli(env, "cancel", runs[1], check=True)  # its stream moves on after the agent read it
        claimed = local_runs.claim_many(app, [(r, queued[r]) for r in runs], "agent-test")
        assert claimed == [runs[0], runs[2]]
        got = statuses(conn, runs)
        assert got[runs[1]] == "cancelled"
        claims = conn.execute(
            "SELECT stream FROM events WHERE type = 'RunClaimed' AND stream = ANY(%s) ORDER BY stream",
            ([f"run-{r}" for r in runs],),
        ).fetchall()
        assert sorted(s for (s,) in claims) == sorted([f"run-{runs[0]}", f"run-{runs[2]}"])
        # claiming again takes nothing: each run is claimed once
        assert local_runs.claim_many(app, [(r, queued[r]) for r in runs], "agent-other") == []
    finally:
        app.close()


def test_ends_recorded_together_skip_a_run_that_had_already_ended(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labctl.executors.base import JobState
    from labctl.finish import finish_runs

    recipe = tmp_path / "gated.toml"
    recipe.write_text(GATED)
    runs = [submit(env, recipe, f"params.gate={tmp_path / 'never'}", f"params.i={i}") for i in (1, 3)]
    run_cli(env, "cancel", runs[0], check=True)  # queued, so it ends cancelled right away
    app = app_for(env, monkeypatch)
    try:
        recorded = finish_runs(
            app.db,
            app.config,
            [(r, JobState(job_id=f"by-hand-{r}", state="failed", exit_code=1, reason="exit code 1")) for r in runs],
            app.meta(),
        )
    finally:
        app.close()
    assert recorded == [None, "failed"]
    assert statuses(conn, runs) == {runs[0]: "cancelled", runs[1]: "failed"}
    assert run_cli(env, "audit", "verify").returncode == 0


def test_ends_recorded_together_when_one_runs_outputs_cannot_be_stored_record_the_others_outputs(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outputs of runs ending together are stored at once (threads); one that cannot be stored
    fails that run alone, and the others' ends, artifacts and aliases are all recorded."""
    from labctl.executors.base import JobState
    from labctl.finish import finish_runs

    recipe = tmp_path / "gated.toml"
    recipe.write_text(GATED)
    runs = {i: submit(env, recipe, f"params.gate={tmp_path / 'never'}", f"params.i={i}") for i in range(4)}
    for i, run_id in runs.items():
        [(path,)] = conn.execute(
            "SELECT data->'outputs'->0->>'path' FROM events WHERE stream = %s AND type = 'RunSubmitted'",
            (f"run-{run_id}",),
        ).fetchall()
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        (out / "v").write_text(str(i))
        (out / "DONE").touch()
        if i == 2:
            (out / ".meta.json").write_text("{}")  # a name the artifact store keeps for itself: refused
    app = app_for(env, monkeypatch)
    try:
        recorded = finish_runs(
            app.db,
            app.config,
            [(r, JobState(job_id=f"by-hand-{r}", state="succeeded", exit_code=0)) for r in runs.values()],
            app.meta(),
        )
    finally:
        app.close()
    assert recorded == ["succeeded", "succeeded", "failed", "succeeded"]
    reason = conn.execute("SELECT reason FROM runs WHERE id = %s", (runs[2],)).fetchone()
    assert reason is not None and "registering outputs failed" in reason[0] and ".meta.json" in reason[0]
    for i, run_id in runs.items():
        stored = conn.execute(
            "SELECT a.path FROM aliases al JOIN artifacts a ON a.id = al.artifact_id"
            " WHERE al.alias = %s AND a.producer_run_id = %s",
            (f"gated-{i}", run_id),
        ).fetchall()
        if i == 2:
            assert stored == []
            continue
        [(path,)] = stored
        assert (Path(path) / "v").read_text() == str(i)
    assert run_cli(env, "audit", "verify").returncode == 0


def test_jobs_started_together_when_one_cannot_start_end_it_failed_and_run_the_others(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    """The jobs claimed together start as slots allow (the agent's job thread); one that cannot start (its
    script cannot be written) ends failed with the reason, and the others run, each recorded once."""
    env = {**env, "LABCTL_CLUSTER": str(write_cluster(tmp_path))}
    recipe = tmp_path / "gated.toml"
    recipe.write_text(GATED)
    gate = tmp_path / "gate"
    gate.touch()
    runs = {i: submit(env, recipe, f"params.gate={gate}", f"params.i={2 * i}") for i in range(3)}
    [(run_dir,)] = conn.execute("SELECT run_dir FROM runs WHERE id = %s", (runs[1],)).fetchall()
    (Path(run_dir) / ".lab" / "submit.sh").mkdir(parents=True)  # where its job script goes: not a file
    with agent(env, tmp_path / "agent.log", "--slots", "3"):
        wait_for(
            lambda: not {"running", "submitted"} & set(statuses(conn, list(runs.values())).values()),
            "all three ended",
            timeout=60,
        )
    assert statuses(conn, list(runs.values())) == {runs[0]: "succeeded", runs[1]: "failed", runs[2]: "succeeded"}
    reason = conn.execute("SELECT reason FROM runs WHERE id = %s", (runs[1],)).fetchone()
    assert reason is not None and reason[0].startswith("could not start:") and "submit.sh" in reason[0]
    ends = conn.execute(
        "SELECT stream, count(*) FROM events WHERE type = 'RunFinished' AND stream = ANY(%s) GROUP BY stream",
        ([f"run-{r}" for r in runs.values()],),
    ).fetchall()
    assert sorted(n for _, n in ends) == [1, 1, 1]
    assert run_cli(env, "audit", "verify").returncode == 0


def test_an_agent_stopped_holding_runs_claimed_ahead_ends_them_cancelled_without_starting_them(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    """With every slot busy (and its jobs short so far) the agent claims runs ahead, to start the moment a
    slot frees. Stopped (SIGTERM) before that, it ends its running jobs and the runs it held ahead, each
    once, as ``cancelled``; the ones held ahead say they never started, and no job was started for them."""
    env = {**env, "LABCTL_CLUSTER": str(write_cluster(tmp_path))}
    recipe = tmp_path / "gated.toml"
    recipe.write_text(GATED)
    # two jobs that end at once first: the agent claims ahead once it has seen its jobs are short
    for i in range(2):
        submit(env, recipe, f"params.gate={recipe}", f"params.i={20 + 2 * i}")
    runs = [submit(env, recipe, f"params.gate={tmp_path / 'never'}", f"params.i={i}") for i in range(4)]

    def count(kind: str) -> int:
        row = conn.execute(
            "SELECT count(*) FROM events WHERE type = %s AND stream = ANY(%s)", (kind, [f"run-{r}" for r in runs])
        ).fetchone()
        return int(row[0]) if row else 0

    with agent(env, tmp_path / "agent.log", "--slots", "2"):
        wait_for(lambda: count("RunClaimed") == 4 and count("JobSubmitted") == 2, "two running, two claimed ahead")
    assert set(statuses(conn, runs).values()) == {"cancelled"}
    assert count("RunFinished") == 4
    reasons = dict(
        conn.execute(
            "SELECT data ->> 'run_id', data ->> 'reason' FROM events WHERE type = 'RunFinished' AND stream = ANY(%s)",
            ([f"run-{r}" for r in runs],),
        ).fetchall()
    )
    never = [r for r in runs if reasons[r] == "the agent stopped before starting it"]
    assert len(never) == 2, reasons
    for run_id in never:
        kinds = [k for (k,) in conn.execute("SELECT type FROM events WHERE stream = %s", (f"run-{run_id}",))]
        assert "JobSubmitted" not in kinds and "RunStarted" not in kinds, kinds
    assert count("JobSubmitted") == 2


QUICK = """\
name = "quick"
command = ["true"]
"""


def test_a_job_that_started_and_ended_before_the_agent_recorded_either_has_both_recorded_start_first(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labctl.agent import Agent

    recipe = tmp_path / "quick.toml"
    recipe.write_text(QUICK)
    run_id = submit(env, recipe)
    app = app_for(env, monkeypatch)
    worker = Agent(app, slots=1, reactors=[])
    worker.jobs.start_thread()
    try:
        assert worker.claim()

        def noted_its_end() -> bool:
            worker.unrecorded.extend(worker.jobs.take())
            return bool(worker.unrecorded.ended)

        wait_for(noted_its_end, "the job started and ended, nothing recorded yet", timeout=60)
        assert [s.run_id for s in worker.unrecorded.started] == [run_id]
        assert worker.record_jobs()
    finally:
        worker.stop()
        app.close()
    # the start and the end went into the one append of the ends, each at its own version, the start first
    rows = conn.execute(
        "SELECT type, version FROM events WHERE stream = %s ORDER BY position", (f"run-{run_id}",)
    ).fetchall()
    types = [t for t, _ in rows]
    assert types[-3:] == ["JobSubmitted", "RunStarted", "RunFinished"]
    assert [v for _, v in rows] == list(range(1, len(rows) + 1))
    assert statuses(conn, [run_id]) == {run_id: "succeeded"}
    started = conn.execute("SELECT started_at, job_id FROM runs WHERE id = %s", (run_id,)).fetchone()
    assert started is not None and started[0] is not None and started[1]
