"""What `labctl run` tells a user when nothing will run their job, and `--wait` with only someone else's agent."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO, agent, run_cli, wait_for

QUICK = REPO / "tests" / "data" / "recipes" / "quick.toml"
HINT = "no agent is running your local runs; start one with `labctl agent`"


def test_run_without_wait_and_no_agent_says_how_to_start_one(env: dict[str, str]) -> None:
    proc = run_cli(env, "run", str(QUICK), check=True)
    assert re.search(r"^run_id: run_\w+$", proc.stdout, re.M)
    assert proc.stderr.count(HINT) == 1, proc.stderr


def test_run_without_wait_with_the_users_agent_alive_gives_no_hint(env: dict[str, str], tmp_path: Path) -> None:
    with agent(env, tmp_path / "agent.log"):
        wait_for(lambda: "slots" in (tmp_path / "agent.log").read_text(), "the agent to start")
        proc = run_cli(env, "run", str(QUICK), check=True)
    assert HINT not in proc.stderr, proc.stderr


def test_wait_runs_its_own_agent_when_only_another_users_agent_is_alive(env: dict[str, str], tmp_path: Path) -> None:
    bob = {**env, "LABCTL_USER": "bob"}
    with agent(bob, tmp_path / "bob-agent.log"):
        wait_for(lambda: "slots" in (tmp_path / "bob-agent.log").read_text(), "bob's agent to start")
        # bob's agent never runs alice's jobs; --wait must not wait on it forever
        proc = run_cli(env, "run", str(QUICK), "--wait", timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^run_\w+: succeeded", proc.stdout, re.M), proc.stdout
