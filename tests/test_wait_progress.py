"""What `--wait` shows: stage names, n/m done, elapsed time, a failed job's last log lines, and what
Ctrl-C leaves running."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import REPO, agent, labctl_bin, run_cli, wait_for
from tests.test_pipelines_acceptance import DATA, status_of

RECIPES = REPO / "tests" / "data" / "recipes"


def test_wait_on_a_pipeline_names_each_stage_and_counts_what_is_done(env: dict[str, str]) -> None:
    proc = run_cli(env, "run-pipeline", str(DATA / "diamond" / "pipeline.toml"), "--wait", check=True, timeout=300)
    ends = re.findall(r"^run_\w+: succeeded exit_code=0  \[(\w+), (\d)/4 done, \d+s\]$", proc.stdout, re.M)
    assert sorted(stage for stage, _ in ends) == ["a", "b", "c", "d"], proc.stdout
    assert sorted(int(n) for _, n in ends) == [1, 2, 3, 4]


def test_wait_on_a_failed_run_shows_the_end_of_its_log(env: dict[str, str]) -> None:
    proc = run_cli(env, "run", str(REPO / "examples" / "ml" / "recipes" / "fail.toml"), "--wait", timeout=120)
    assert proc.returncode == 1
    assert re.search(r"^run_\w+: failed exit_code=3", proc.stdout, re.M), proc.stdout
    assert "last lines of" in proc.stderr and "| failing on purpose" in proc.stderr, proc.stderr


def _ctrl_c_as_at_a_terminal() -> None:
    # A command typed at a terminal gets Ctrl-C with its default action. A test suite started in the
    # background by a non-interactive shell (`pytest &`, as CI scripts may) has SIGINT ignored, and an
    # ignored signal stays ignored across exec: Python would then never raise KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupted_wait(
    env: dict[str, str], conn: psycopg.Connection[Any]
) -> tuple[str, subprocess.CompletedProcess[str]]:
    proc = subprocess.Popen(
        [*labctl_bin(), "run", str(RECIPES / "sleep.toml"), "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_as_at_a_terminal,
    )
    assert proc.stdout is not None
    run_id = re.match(r"run_id: (\S+)", proc.stdout.readline())
    assert run_id, "no run_id line"
    wait_for(lambda: status_of(conn, run_id.group(1)) == "running", "the job to start", timeout=60)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return run_id.group(1), subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_on_wait_with_its_own_agent_says_the_job_was_cancelled(
    conn: psycopg.Connection[Any], env: dict[str, str]
) -> None:
    run_id, proc = _interrupted_wait(env, conn)
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert "this command's agent stopped" in proc.stderr and run_id in proc.stderr, proc.stderr
    assert status_of(conn, run_id) == "cancelled"


def test_ctrl_c_on_wait_with_an_agent_running_leaves_the_job_running(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    with agent(env, tmp_path / "agent.log"):
        wait_for(lambda: "slots" in (tmp_path / "agent.log").read_text(), "the agent to start")
        run_id, proc = _interrupted_wait(env, conn)
        assert proc.returncode == 130, proc.stdout + proc.stderr
        assert "a running `labctl agent` goes on with" in proc.stderr and run_id in proc.stderr, proc.stderr
        assert status_of(conn, run_id) == "running"
        run_cli(env, "cancel", run_id, check=True)
