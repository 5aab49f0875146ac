"""The local executor starts a job's command without the job script's bash where that bash would only set
variables, enter the working directory and ``exec`` the command: the job must not tell the difference."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import pytest

from labctl.executors.base import JobSpec, JobState
from labctl.executors.local import LocalExecutor
from labctl.executors.sbatch_script import SHEBANG, local_direct_exec, render_script_body
from labctl.secrets import SECRETS_FILE

#: prints what a job can see of how it was started
SHOW = "import json, os, sys; print(json.dumps([sys.argv[1:], os.getcwd(), dict(os.environ)]))"


def _job(run_dir: Path, command: list[str], env: dict[str, str], workdir: Path, *, direct: bool) -> JobSpec:
    """The job as the agent's ``job_spec`` renders it: its script, and what that script's bash would exec."""
    (run_dir / ".lab").mkdir(parents=True, exist_ok=True)
    script = run_dir / ".lab" / "submit.sh"
    body = render_script_body(
        env=env, command=command, workdir=workdir, labctl_bin=None, run_dir=run_dir, job_id_expr=shlex.quote("j-1")
    )
    script.write_text(SHEBANG + body)
    plan = local_direct_exec(env=env, command=command, workdir=workdir, run_dir=run_dir, job_id="j-1")
    return JobSpec(
        run_id="r1",
        run_dir=run_dir,
        script=script,
        log_path=run_dir / "job.log",
        time_limit_seconds=None,
        job_name="r1",
        direct=plan if direct else None,
    )


def _run(job: JobSpec) -> tuple[JobState, str]:
    executor = LocalExecutor()
    job_id = executor.submit(job)
    deadline = time.monotonic() + 30
    while (state := executor.poll([job_id])[job_id]).active:
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.01)
    return state, job.log_path.read_text()


@pytest.mark.parametrize("shell_level", [None, "2"])
def test_a_job_started_without_the_scripts_bash_sees_the_argv_dir_and_environment_the_script_gives_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shell_level: str | None
) -> None:
    if shell_level is None:
        monkeypatch.delenv("SHLVL", raising=False)  # bash then sets one
    else:
        monkeypatch.setenv("SHLVL", shell_level)
    monkeypatch.setenv("_", "/usr/bin/something")  # bash drops it
    command = [sys.executable, "-c", SHOW, "an arg", "it's $HOME", ""]
    env = {"GREETING": "hello world", "QUOTED": "a'b\"c $X", "CUDA_VISIBLE_DEVICES": "1", "LABCTL_RUN_ID": "r1"}
    runs = {}
    for direct in (False, True):
        run_dir = tmp_path / f"run {direct}"
        workdir = run_dir / "source" / "my repo"
        workdir.mkdir(parents=True)
        job = _job(run_dir, command, env, workdir, direct=direct)
        assert job.direct is not None or not direct
        if direct:
            job.script.write_text(SHEBANG + "exit 99\n")  # this job must not run its script at all
        state, log = _run(job)
        assert state.state == "succeeded", log
        argv, cwd, seen = json.loads(log)
        runs[direct] = (
            argv,
            cwd.replace(str(run_dir), "RUN"),
            {k: v.replace(str(run_dir), "RUN") for k, v in seen.items()},
        )

    assert runs[True] == runs[False]
    argv, cwd, seen = runs[True]
    assert (argv, cwd) == (["an arg", "it's $HOME", ""], "RUN/source/my repo")
    assert (seen["QUOTED"], seen["PWD"], seen["OLDPWD"], seen["LABCTL_JOB_ID"]) == ("a'b\"c $X", cwd, "RUN", "j-1")


def test_a_job_whose_command_cannot_start_runs_its_script_whose_bash_says_why_and_exits_127(tmp_path: Path) -> None:
    job = _job(tmp_path, ["no-such-program-labctl"], {}, tmp_path, direct=True)
    assert job.direct is not None

    state, log = _run(job)

    assert (state.state, state.exit_code) == ("failed", 127)
    assert "no-such-program-labctl: not found" in log


def test_a_job_whose_working_directory_is_gone_runs_its_script_which_says_so_and_exits_1(tmp_path: Path) -> None:
    job = _job(tmp_path, ["true"], {}, tmp_path / "gone", direct=True)

    state, log = _run(job)

    assert (state.state, state.exit_code) == ("failed", 1)
    assert f"labctl: cannot enter {tmp_path / 'gone'}" in log


@pytest.mark.parametrize(
    ("command", "env", "modules", "secrets"),
    [
        (["source", "setup.sh"], {}, (), False),  # a builtin runs in the script's bash
        (["GREETING=hi", "env"], {}, (), False),  # an assignment is the command's environment in bash
        (["env"], {"TOKEN": "${TOKEN}"}, (), False),  # a reference resolves in the script's bash
        (["env"], {"BASH_ENV": "/etc/x"}, (), False),  # a variable bash itself reads
        (["env"], {}, ("cuda/12",), False),  # a module to load
        (["env"], {}, (), True),  # a secrets file to source
    ],
)
def test_a_script_that_needs_its_bash_is_run_by_bash(
    tmp_path: Path, command: list[str], env: dict[str, str], modules: tuple[str, ...], secrets: bool
) -> None:
    if secrets:
        (tmp_path / SECRETS_FILE).parent.mkdir(parents=True)
        (tmp_path / SECRETS_FILE).write_text("export TOKEN=x\n")

    plan = local_direct_exec(env=env, command=command, workdir=tmp_path, run_dir=tmp_path, job_id="j", modules=modules)

    assert plan is None
