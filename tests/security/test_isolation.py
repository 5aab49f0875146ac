"""Issue 13 item 1: an agent acts for its own user only, and never signals a process it cannot prove is its job."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

import projections
from events import NewEvent
from events.types import JobSubmitted, RunClaimed, RunStarted, RunSubmitted
from labctl.db import connect
from labctl.executors.local import process_start
from tests.conftest import agent, run_cli, wait_for
from tests.security.conftest import Shared
from tests.test_pipelines_acceptance import Submitted
from tests.test_runs_acceptance import RECIPES, job_pid, live_processes_in_group, printed, status_of

WHO = 'name = "who"\ncommand = \'id -un > "$LABCTL_RUN_DIR/who"\'\n'


def _status(url: str, run_id: str) -> tuple[str, str | None]:
    with connect(url) as conn:
        row = conn.execute("SELECT status, agent_id FROM runs WHERE id = %s", (run_id,)).fetchone()
    assert row is not None
    return row[0], row[1]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def test_an_agent_runs_its_own_users_runs_and_never_another_users(
    shared: Shared, os_user: Callable[[str], pwd.struct_passwd]
) -> None:
    alice, bob = os_user("labsec_alice"), os_user("labsec_bob")
    recipe = shared.root / "who.toml"
    recipe.write_text(WHO)
    bobs = printed(shared.cli(bob, "run", str(recipe), "--no-cache").stdout, "run_id")
    alices = printed(shared.cli(alice, "run", str(recipe), "--no-cache").stdout, "run_id")

    worker = shared.agent(alice)
    try:
        # alice's agent takes runs oldest first: had it taken bob's (older) run, it would have by now
        wait_for(lambda: _status(shared.url, alices)[0] == "succeeded", "alice's run to succeed under her agent")
    finally:
        _stop(worker)
    assert _status(shared.url, bobs) == ("submitted", None), "alice's agent touched bob's run"

    worker = shared.agent(bob)
    try:
        wait_for(lambda: _status(shared.url, bobs)[0] == "succeeded", "bob's run to succeed under his own agent")
    finally:
        _stop(worker)
    run_dirs = shared.root / "runs"
    assert (run_dirs / "runs" / "labsec_bob" / bobs / "who").read_text().strip() == "labsec_bob"
    assert (run_dirs / "runs" / "labsec_alice" / alices / "who").read_text().strip() == "labsec_alice"


def test_an_agent_does_not_advance_another_users_pipeline(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "a.toml").write_text(
        'name = "a"\ncommand = "echo x > {outputs.o.path}/f"\n'
        '[outputs.o]\ntype = "dataset"\nmarker = "f"\nalias = "a-{run.id}"\n'
    )
    (tmp_path / "b.toml").write_text(
        'name = "b"\ncommand = "true"\n[inputs.x]\ntype = "stage"\nstage = "a"\nrole = "o"\n'
    )
    (tmp_path / "p.toml").write_text('name = "p"\n[stages.a]\nrecipe = "a.toml"\n[stages.b]\nrecipe = "b.toml"\n')
    bob = {**env, "LABCTL_USER": "bob"}
    out = run_cli(bob, "run-pipeline", str(tmp_path / "p.toml"), check=True).stdout
    pipeline = Submitted(out).pipeline_id

    with agent({**env, "LABCTL_USER": "alice"}, tmp_path / "alice.log", "--drain") as alices:
        alices.wait(60)
    rows = dict(conn.execute("SELECT stage_name, status FROM runs WHERE pipeline_id = %s", (pipeline,)).fetchall())
    assert rows == {"a": "submitted", "b": "created"}, "alice's agent ran or advanced bob's pipeline"

    with agent(bob, tmp_path / "bob.log", "--drain") as bobs:
        bobs.wait(60)
    rows = dict(conn.execute("SELECT stage_name, status FROM runs WHERE pipeline_id = %s", (pipeline,)).fetchall())
    reasons = conn.execute("SELECT reason FROM runs WHERE pipeline_id = %s", (pipeline,)).fetchall()
    assert rows == {"a": "succeeded", "b": "succeeded"}, reasons


def test_reaping_another_users_stale_run_records_node_fail_but_never_signals_it(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    alice = {**env, "LABCTL_AGENT_STALE_SECONDS": "2"}
    with agent(alice, tmp_path / "alice.log") as first:
        run_id = printed(run_cli(alice, "run", str(RECIPES / "sleep.toml"), check=True).stdout, "run_id")
        wait_for(lambda: status_of(conn, run_id) == "running", "alice's job to run")
        pgid = job_pid(conn, run_id)
        first.kill()
        first.wait(10)
    try:
        with agent({**alice, "LABCTL_USER": "bob"}, tmp_path / "bob.log"):
            wait_for(lambda: status_of(conn, run_id) == "node_fail", "bob's agent to record alice's run node_fail")
        assert live_processes_in_group(pgid), "bob's agent signalled alice's job"
    finally:
        os.killpg(pgid, signal.SIGKILL)


def test_a_reused_pid_is_not_killed_when_a_stale_run_is_reaped(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    # An innocent process now holds the pid a dead agent recorded for its job (pids are reused).
    innocent = subprocess.Popen(["sleep", "300"], start_new_session=True)
    started = process_start(innocent.pid)
    assert started is not None
    conn.execute(
        "INSERT INTO agents (id, host, pid, user_name, slots, heartbeat_at) "
        "VALUES ('agent_dead', %s, 1, 'alice', 1, now() - interval '1 hour')",
        (socket.gethostname(),),
    )
    job_id = f"{socket.gethostname()}:{innocent.pid}"
    stream = "run-run_reused"
    projections.record(
        conn,
        [
            NewEvent(
                stream,
                RunSubmitted(
                    run_id="run_reused", name="x", user="alice", executor="local", run_dir=str(tmp_path), recipe={}
                ),
                0,
            ),
            NewEvent(stream, RunClaimed(run_id="run_reused", agent_id="agent_dead")),
            # the dead agent's job started long before the innocent process
            NewEvent(
                stream,
                JobSubmitted(
                    run_id="run_reused",
                    executor="local",
                    job_id=job_id,
                    agent_id="agent_dead",
                    process_start=started - 1000,
                ),
            ),
            NewEvent(
                stream, RunStarted(run_id="run_reused", started_at=__import__("datetime").datetime.now(), job_id=job_id)
            ),
        ],
    )
    try:
        with agent({**env, "LABCTL_AGENT_STALE_SECONDS": "2"}, tmp_path / "agent.log"):
            wait_for(lambda: status_of(conn, "run_reused") == "node_fail", "the stale run to end node_fail")
        assert innocent.poll() is None, "the agent killed a process that merely reused the job's pid"
    finally:
        innocent.kill()
        innocent.wait()


def test_only_the_configured_service_account_may_run_an_agent_for_every_user(
    env: dict[str, str], tmp_path: Path
) -> None:
    refused = run_cli(env, "agent", "--service")
    assert refused.returncode == 2 and "service_user" in refused.stderr, refused.stderr

    cluster = tmp_path / "cluster.toml"
    home = Path(env["LABCTL_HOME"])
    cluster.write_text(
        f'name = "t"\n[scheduler]\nkind = "local"\n[filesystem]\nruns_base = "{home / "runs"}"\n'
        '[dispatch]\nservice_user = "labsvc"\n'
    )
    not_it = run_cli({**env, "LABCTL_CLUSTER": str(cluster)}, "agent", "--service")
    assert not_it.returncode == 2 and "only labsvc" in not_it.stderr, not_it.stderr

    svc = {**env, "LABCTL_CLUSTER": str(cluster), "LABCTL_USER": "labsvc"}
    bobs = printed(
        run_cli({**svc, "LABCTL_USER": "bob"}, "run", str(RECIPES / "quick.toml"), check=True).stdout, "run_id"
    )
    with agent(svc, tmp_path / "svc.log", "--service", "--drain") as service:
        service.wait(60)
    with connect(env["LABCTL_DATABASE_URL"]) as conn:
        assert status_of(conn, bobs) == "succeeded"
