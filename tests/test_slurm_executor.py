"""The SLURM executor against a real SLURM cluster (``scripts/slurm-up.sh``), and its job script.

Tests marked ``slurm`` are skipped when sbatch/sacct are not on PATH, unless
LABCTL_REQUIRE_SLURM is set (then they fail). The script tests are pure.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from labctl.executors.base import JobSpec, JobState
from labctl.executors.errors import ExecutorError
from labctl.executors.sbatch_script import (
    SHEBANG,
    render_sbatch_header,
    render_sbatch_script,
    render_script_body,
)
from labctl.executors.slurm import (
    SlurmExecutor,
    aggregate,
    array_indices,
    parse_sacct_line,
    parse_sbatch_output,
)
from labctl.files.cluster import SlurmSettings
from labctl.files.recipe import Component, Resources

#: a normal job starts within seconds; the deadline only matters when the node is busy with others' jobs
JOB_DEADLINE = 120.0
#: `--time=1` ends as TIMEOUT after 60 s plus up to one slurmctld time-limit sweep (observed 87 s)
TIMEOUT_DEADLINE = 240.0


# ---- helpers


def _recorder(directory: Path) -> Path:
    """A stand-in for `labctl` that records its arguments, so a test sees whether hash-outputs ran."""
    path = directory / "fake-labctl"
    path.write_text(f'#!/bin/bash\necho "$@" >> {directory}/hash-outputs.calls\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def make_job(
    directory: Path,
    command: list[str],
    *,
    name: str | None = None,
    resources: Resources | None = None,
    slurm: SlurmSettings | None = None,
    array: str | None = None,
    after_ok: tuple[str, ...] = (),
) -> JobSpec:
    """Render `.lab/submit.sh` for ``command`` in a fresh run dir under ``directory``."""
    run_id = name or f"run_{uuid.uuid4().hex[:12]}"
    run_dir = directory / run_id
    (run_dir / ".lab").mkdir(parents=True)
    resources = resources or Resources(cpus=1, mem="100MB", time="00:05:00")
    job = JobSpec(
        run_id=run_id,
        run_dir=run_dir,
        script=run_dir / ".lab" / "submit.sh",
        log_path=run_dir / ".lab" / ("job-%a.log" if array else "job.log"),
        time_limit_seconds=300,
        job_name="labctl-test",
        comment=run_id,
        array=array,
        after_ok=after_ok,
    )
    script = render_sbatch_script(
        job,
        resources=resources,
        slurm=slurm or SlurmSettings(),
        env={"LABCTL_RUN_ID": run_id, "LABCTL_RUN_DIR": str(run_dir)},
        command=command,
        workdir=run_dir,
        labctl_bin=str(_recorder(run_dir)),
        run_dir=run_dir,
    )
    job.script.write_text(script)
    return job


def wait_for(
    executor: SlurmExecutor,
    job_id: str,
    done: Callable[[JobState], bool],
    *,
    deadline: float = JOB_DEADLINE,
) -> JobState:
    """Poll until ``done(state)`` holds; fail with the last state seen after ``deadline`` seconds."""
    give_up = time.monotonic() + deadline
    last: JobState | None = None
    while time.monotonic() < give_up:
        last = executor.poll([job_id]).get(job_id, last)
        if last is not None and done(last):
            return last
        time.sleep(0.5)
    pytest.fail(f"job {job_id} did not reach the expected state in {deadline:g} s; last seen: {last}")


def finished(state: JobState) -> bool:
    return not state.active


@dataclass
class Cluster:
    executor: SlurmExecutor
    directory: Path
    #: submitted first so its minute-long time limit runs out while the other tests run
    timeout_job_id: str
    submitted: list[str] = field(default_factory=list)

    def submit(self, job: JobSpec) -> str:
        job_id = self.executor.submit(job)
        self.submitted.append(job_id)
        return job_id


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    missing = [c for c in ("sbatch", "sacct", "squeue", "scancel") if shutil.which(c) is None]
    if missing:
        message = f"SLURM commands not on PATH: {', '.join(missing)} (run scripts/slurm-up.sh)"
        if os.environ.get("LABCTL_REQUIRE_SLURM"):
            pytest.fail(message)
        pytest.skip(message)
    directory = tmp_path_factory.mktemp("slurm")
    executor = SlurmExecutor()
    timeout_job = make_job(
        directory,
        ["sleep", "600"],
        resources=Resources(cpus=1, mem="100MB", time=1),
    )
    state = Cluster(executor, directory, executor.submit(timeout_job))
    state.submitted.append(state.timeout_job_id)
    yield state
    executor.cancel(state.submitted)


# ---- against the real cluster


@pytest.mark.slurm
def test_job_exiting_zero_succeeds_and_hashes_outputs(cluster: Cluster) -> None:
    job = make_job(cluster.directory, ["bash", "-c", "echo hello"])
    job_id = cluster.submit(job)

    state = wait_for(cluster.executor, job_id, finished)

    assert state.state == "succeeded"
    assert state.exit_code == 0
    assert state.started_at is not None and state.finished_at is not None
    assert state.finished_at >= state.started_at
    assert "hello" in job.log_path.read_text()
    calls = (job.run_dir / "hash-outputs.calls").read_text()
    assert calls.strip() == f"hash-outputs --run-dir {job.run_dir}"


@pytest.mark.slurm
def test_job_exiting_3_fails_with_exit_code_3_and_no_hashing(cluster: Cluster) -> None:
    job = make_job(cluster.directory, ["bash", "-c", "exit 3"])
    job_id = cluster.submit(job)

    state = wait_for(cluster.executor, job_id, finished)

    assert (state.state, state.exit_code, state.signal) == ("failed", 3, None)
    assert not (job.run_dir / "hash-outputs.calls").exists()


@pytest.mark.slurm
def test_cancelled_job_is_reported_cancelled(cluster: Cluster) -> None:
    job_id = cluster.submit(make_job(cluster.directory, ["sleep", "300"]))
    wait_for(cluster.executor, job_id, lambda s: s.state in ("submitted", "running"))

    cluster.executor.cancel([job_id])

    assert wait_for(cluster.executor, job_id, finished).state == "cancelled"


@pytest.mark.slurm
def test_array_reports_each_element_and_the_failure_wins(cluster: Cluster) -> None:
    command = ["bash", "-c", 'sleep 1; [ "$LABCTL_SWEEP_INDEX" = 2 ] && exit 7; exit 0']
    job_id = cluster.submit(make_job(cluster.directory, command, array="0-3%2"))

    # the aggregate turns failed as soon as element 2 fails, while element 3 may still run
    state = wait_for(cluster.executor, job_id, finished)
    assert state.state == "failed"
    give_up = time.monotonic() + JOB_DEADLINE
    elements = cluster.executor.poll_array(job_id)
    while (len(elements) < 4 or any(e.active for e in elements.values())) and time.monotonic() < give_up:
        time.sleep(0.5)
        elements = cluster.executor.poll_array(job_id)
    state = cluster.executor.poll([job_id])[job_id]

    assert state.state == "failed"
    assert state.exit_code == 7
    assert {i: e.state for i, e in elements.items()} == {
        0: "succeeded",
        1: "succeeded",
        2: "failed",
        3: "succeeded",
    }
    assert elements[2].exit_code == 7
    assert elements[2].job_id == f"{job_id}_2"


@pytest.mark.slurm
def test_pending_array_range_expands_to_submitted_elements(cluster: Cluster) -> None:
    held = Resources(cpus=1, mem="100MB", sbatch_extra=["--hold"])
    job_id = cluster.submit(make_job(cluster.directory, ["true"], array="5-9%2", resources=held))
    try:
        elements = {}
        give_up = time.monotonic() + JOB_DEADLINE
        while set(elements) != {5, 6, 7, 8, 9} and time.monotonic() < give_up:
            elements = cluster.executor.poll_array(job_id)
            time.sleep(0.5)
        assert {i: e.state for i, e in elements.items()} == dict.fromkeys(range(5, 10), "submitted")
    finally:
        cluster.executor.cancel([job_id])


@pytest.mark.slurm
def test_poll_of_three_jobs_makes_one_sacct_call(cluster: Cluster) -> None:
    job_ids = [cluster.submit(make_job(cluster.directory, ["true"])) for _ in range(3)]
    for job_id in job_ids:
        wait_for(cluster.executor, job_id, finished)
    executor = SlurmExecutor()

    states = executor.poll(job_ids)

    assert executor.sacct_calls == 1
    assert executor.squeue_calls == 0
    assert {s.state for s in states.values()} == {"succeeded"}
    assert set(states) == set(job_ids)


@pytest.mark.slurm
def test_find_by_comment_finds_a_job_whose_id_was_never_recorded(cluster: Cluster) -> None:
    job = make_job(cluster.directory, ["sleep", "2"])
    job_id = cluster.submit(job)
    executor = SlurmExecutor()  # a fresh agent after a crash: it never saw the id

    wanted = {job.run_id: job.job_name, "run_never_submitted": job.job_name}
    assert executor.find_by_comment(wanted) == {job.run_id: job_id}
    wait_for(cluster.executor, job_id, finished)
    # still found once it has left squeue and only accounting knows it (by its working directory)
    assert executor.find_by_comment({job.run_id: job.job_name}) == {job.run_id: job_id}


@pytest.mark.slurm
def test_sbatch_refusal_is_an_executor_error_with_sbatch_words(cluster: Cluster) -> None:
    job = make_job(cluster.directory, ["true"], resources=Resources(partition="no-such-partition"))

    with pytest.raises(ExecutorError, match="invalid partition"):
        cluster.executor.submit(job)


def _bin_dir_with_broken_sacct(directory: Path) -> Path:
    """Real sbatch/squeue/scancel, and a sacct that fails the way it does with slurmdbd down."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(exist_ok=True)
    for command in ("sbatch", "squeue", "scancel"):
        link = bin_dir / command
        if not link.exists():
            link.symlink_to(shutil.which(command) or command)
    sacct = bin_dir / "sacct"
    sacct.write_text(
        '#!/bin/sh\necho "sacct: error: Problem talking to the database: Connection refused" >&2\nexit 1\n'
    )
    sacct.chmod(0o755)
    return bin_dir


@pytest.mark.slurm
def test_with_accounting_down_a_running_job_stays_running_via_squeue(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one at a time: the timeout job holds one of the test node's two CPUs
    done_id = cluster.submit(make_job(cluster.directory, ["true"]))
    wait_for(cluster.executor, done_id, finished)
    running_id = cluster.submit(make_job(cluster.directory, ["sleep", "300"]))
    wait_for(cluster.executor, running_id, lambda s: s.state == "running")
    executor = SlurmExecutor(
        bin_dir=_bin_dir_with_broken_sacct(cluster.directory), max_interval=30, accounting_down_interval=60
    )

    states = executor.poll([running_id, done_id])

    assert executor.accounting_ok is False
    assert "Problem talking to the database" in (executor.last_accounting_error or "")
    assert executor.sacct_calls == 1 and executor.squeue_calls == 1
    assert states[running_id].state == "running"
    assert states[running_id].reason == "accounting unavailable; state from squeue"
    # squeue may still list the finished job for MinJobAge seconds; never as finished
    assert done_id not in states or states[done_id].active
    assert executor.next_interval(changed=True) == 60
    cluster.executor.cancel([running_id])


@pytest.mark.slurm
def test_sacct_pointed_at_an_unreachable_slurmdbd_reports_accounting_down(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # the real sacct with slurm.conf naming a port nobody listens on: the same error as slurmdbd down
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    if not conf.is_file():
        pytest.skip(f"no slurm.conf at {conf}")
    text = conf.read_text().replace("AccountingStorageHost=", "AccountingStoragePort=1\nAccountingStorageHost=")
    (tmp_path / "slurm.conf").write_text(text)
    job_id = cluster.submit(make_job(cluster.directory, ["sleep", "300"]))
    wait_for(cluster.executor, job_id, lambda s: s.state == "running")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    executor = SlurmExecutor()

    states = executor.poll([job_id])

    assert executor.accounting_ok is False
    assert "Problem talking to the database" in (executor.last_accounting_error or "")
    assert states[job_id].state == "running"
    cluster.executor.cancel([job_id])


@pytest.mark.slurm
def test_job_over_its_time_limit_ends_as_timeout(cluster: Cluster) -> None:
    state = wait_for(cluster.executor, cluster.timeout_job_id, finished, deadline=TIMEOUT_DEADLINE)

    assert state.state == "timeout"


# ---- the job script (pure)


def _job(**changes: object) -> JobSpec:
    values: dict[str, object] = {
        "run_id": "run_abc",
        "run_dir": Path("/runs/run_abc"),
        "script": Path("/runs/run_abc/.lab/submit.sh"),
        "log_path": Path("/runs/run_abc/.lab/job.log"),
        "time_limit_seconds": 3600,
        "job_name": "train",
        "comment": "run_abc",
    }
    values.update(changes)
    return JobSpec(**values)  # type: ignore[arg-type]


def _sbatch_lines(header: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in header.splitlines()]


def test_header_carries_name_log_time_cpus_mem_and_gres_in_the_cluster_syntax() -> None:
    resources = Resources(gpus=2, cpus=8, mem="32GB", time="1-02:03:04", nodes=1, exclude_nodes=["n1", "n2"])
    slurm = SlurmSettings(gres_gpu_syntax="gpu:a100:{n}")

    lines = _sbatch_lines(render_sbatch_header(_job(), resources=resources, slurm=slurm))

    assert lines == [  # the original labctl's order
        "--job-name=train",
        "--comment=run_abc",
        "--nodes=1",
        "--exclude=n1,n2",
        "--gres=gpu:a100:2",
        "--cpus-per-task=8",
        "--mem=32768",
        "--time=1-02:03:04",
        "--output=/runs/run_abc/.lab/job.log",
        "--error=/runs/run_abc/.lab/job.log",
    ]


def test_no_gres_line_without_gpus_and_minutes_become_a_time_limit() -> None:
    lines = _sbatch_lines(render_sbatch_header(_job(), resources=Resources(time=90), slurm=SlurmSettings()))

    assert not any(line.startswith("--gres") for line in lines)
    assert "--time=0-01:30:00" in lines


def test_recipe_qos_partition_and_account_win_over_the_cluster() -> None:
    slurm = SlurmSettings(qos="cluster-qos", partition="cluster-part", account="cluster-acct")
    recipe_wins = Resources(qos="recipe-qos", partition="recipe-part")

    lines = _sbatch_lines(render_sbatch_header(_job(), resources=recipe_wins, slurm=slurm))
    cluster_only = _sbatch_lines(render_sbatch_header(_job(), resources=Resources(), slurm=slurm))

    assert {"--qos=recipe-qos", "--partition=recipe-part", "--account=cluster-acct"} <= set(lines)
    assert not {"--qos=cluster-qos", "--partition=cluster-part"} & set(lines)
    assert {"--qos=cluster-qos", "--partition=cluster-part", "--account=cluster-acct"} <= set(cluster_only)


def test_sbatch_extra_array_and_dependency_lines() -> None:
    resources = Resources(sbatch_extra=["--constraint=a100", "--signal=USR1@60"])

    lines = _sbatch_lines(
        render_sbatch_header(_job(array="0-9%2", after_ok=("11", "12")), resources=resources, slurm=SlurmSettings())
    )

    assert "--constraint=a100" in lines and "--signal=USR1@60" in lines
    assert "--array=0-9%2" in lines
    assert "--dependency=afterok:11:12" in lines
    assert "--kill-on-invalid-dep=yes" in lines  # as the original: a failed dependency cancels the job


def test_heterogeneous_job_is_resources_then_one_block_per_component_separated_by_hetjob() -> None:
    resources = Resources(
        cpus=48,
        mem="256GB",
        time="00:30:00",
        qos="recipe-qos",
        components=[
            Component(gpus=1, cpus=4, mem="8GB", partition="gpu"),
            Component(cpus=2, mem="2GB", qos="cpu-qos"),
        ],
    )

    header = render_sbatch_header(_job(), resources=resources, slurm=SlurmSettings(partition="cluster-part"))
    blocks = header.split("#SBATCH hetjob\n")

    assert len(blocks) == 3  # component 0 is [resources] itself
    zero, first, second = (_sbatch_lines(b) for b in blocks)
    assert {"--job-name=train", "--cpus-per-task=48", "--mem=262144", "--time=0-00:30:00", "--qos=recipe-qos"} <= set(
        zero
    )
    assert first == ["--nodes=1", "--cpus-per-task=4", "--mem=8192", "--partition=gpu", "--gres=gpu:1"]
    assert second == ["--nodes=1", "--cpus-per-task=2", "--mem=2048", "--partition=cluster-part", "--qos=cpu-qos"]
    assert header.count("--time=") == 1 and header.count("--job-name=") == 1  # job-wide: component 0 only


def test_heterogeneous_array_is_refused() -> None:
    resources = Resources(components=[Component(), Component()])

    with pytest.raises(ValueError, match="heterogeneous"):
        render_sbatch_header(_job(array="0-3"), resources=resources, slurm=SlurmSettings())


def test_a_newline_in_an_sbatch_value_is_refused() -> None:
    with pytest.raises(ValueError, match="one line"):
        render_sbatch_header(_job(job_name="x\necho pwned"), resources=Resources(), slurm=SlurmSettings())


def _run_body(tmp_path: Path, command: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    script = tmp_path / "body.sh"
    script.write_text(
        SHEBANG
        + render_script_body(
            env=env or {},
            command=command,
            workdir=tmp_path,
            labctl_bin=str(_recorder(tmp_path)),
            run_dir=tmp_path / "run dir",
            job_id_expr="local-1",
        )
    )
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    return result.returncode, result.stdout


def test_body_preserves_the_user_exit_code_and_skips_hashing_on_failure(tmp_path: Path) -> None:
    rc, _ = _run_body(tmp_path, ["bash", "-c", "exit 3"])

    assert rc == 3
    assert not (tmp_path / "hash-outputs.calls").exists()


def test_body_hashes_outputs_after_exit_zero_with_quoted_env_and_argv(tmp_path: Path) -> None:
    env = {"GREETING": "it's $HOME; `rm -rf /`", "EMPTY": ""}
    rc, out = _run_body(
        tmp_path, ["bash", "-c", 'printf "%s|%s|%s|%s\\n" "$GREETING" "$1" "$LABCTL_JOB_ID" "$PWD"', "_", "a b"], env
    )

    assert rc == 0
    assert out == f"it's $HOME; `rm -rf /`|a b|local-1|{tmp_path}\n"
    assert (tmp_path / "hash-outputs.calls").read_text() == f"hash-outputs --run-dir {tmp_path / 'run dir'}\n"


def _run_local_body(tmp_path: Path, command: list[str]) -> subprocess.CompletedProcess[str]:
    """The body as the local executor writes it (no hashing: its agent hashes the outputs), run by bash."""
    script = tmp_path / "local.sh"
    body = render_script_body(env={}, command=command, workdir=tmp_path, labctl_bin=None, run_dir=tmp_path)
    script.write_text(SHEBANG + body)
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)


def test_local_body_replaces_bash_with_the_command_and_keeps_its_exit_code(tmp_path: Path) -> None:
    result = _run_local_body(tmp_path, ["bash", "-c", 'echo "$PPID"; exit 3'])

    assert result.returncode == 3
    # the command's parent is whoever ran the script: no bash in between, one process fewer per job
    assert result.stdout == f"{os.getpid()}\n"


def test_local_body_runs_a_command_that_is_a_shell_builtin_in_bash(tmp_path: Path) -> None:
    (tmp_path / "setup.sh").write_text('echo "sourced in $BASH_SOURCE"\n')

    result = _run_local_body(tmp_path, ["source", "setup.sh"])  # `exec source` would fail: not a program

    assert (result.returncode, result.stdout) == (0, "sourced in setup.sh\n")


def test_local_body_keeps_leading_assignments_as_the_commands_environment(tmp_path: Path) -> None:
    result = _run_local_body(tmp_path, ["GREETING=hello", "bash", "-c", 'echo "$GREETING"'])

    assert (result.returncode, result.stdout) == (0, "hello\n")  # `exec GREETING=...` would be "not found"


def test_body_appends_the_swept_argument_from_the_array_index(tmp_path: Path) -> None:
    body = render_script_body(
        env={},
        command=["python", "train.py"],
        workdir=tmp_path,
        labctl_bin="labctl",
        run_dir=tmp_path,
        sweep_index_expr="${SLURM_ARRAY_TASK_ID}",
        sweep_arg="lr",
    )

    assert "export LABCTL_SWEEP_INDEX=${SLURM_ARRAY_TASK_ID}\n" in body
    assert 'python train.py --lr="${LABCTL_SWEEP_INDEX}"\n' in body


def test_sbatch_script_exports_slurm_ids() -> None:
    script = render_sbatch_script(
        _job(array="0-3"),
        resources=Resources(),
        slurm=SlurmSettings(),
        env={"A": "1"},
        command=["true"],
        workdir=Path("/w"),
        labctl_bin="labctl",
        run_dir=Path("/runs/run_abc"),
    )

    assert script.startswith("#!/bin/bash\n#SBATCH --job-name=train\n#SBATCH --comment=run_abc\n")
    assert "export LABCTL_JOB_ID=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}\n" in script
    assert "export LABCTL_SWEEP_INDEX=${SLURM_ARRAY_TASK_ID}\n" in script
    assert script.endswith("exit $rc\n")


# ---- sacct / sbatch output (pure)


def test_sbatch_parsable_output_with_and_without_cluster() -> None:
    assert parse_sbatch_output("123\n") == "123"
    assert parse_sbatch_output("456;labctl\n") == "456"
    with pytest.raises(ExecutorError):
        parse_sbatch_output("Submitted batch job 1\n")


def _rows(text: str) -> list:  # type: ignore[type-arg]
    return [row for line in text.strip().splitlines() if (row := parse_sacct_line(line)) is not None]


def test_heterogeneous_components_aggregate_with_running_over_succeeded() -> None:
    rows = _rows(
        """
24|24+0|het|RUNNING|0:0|2026-11-26T06:15:16|Unknown
25|24+1|het|COMPLETED|0:0|2026-11-26T06:15:16|2026-11-26T06:15:20
"""
    )

    state = aggregate("24", rows)

    assert state.state == "running"
    assert state.exit_code is None and state.finished_at is None


def test_sacct_states_map_to_run_states() -> None:
    rows = _rows(
        """
1|1|a|CANCELLED by 0|0:15|2026-11-26T06:15:16|2026-11-26T06:15:20
2|2|a|OUT_OF_MEMORY|0:125|2026-11-26T06:15:16|2026-11-26T06:15:20
3|3|a|NODE_FAIL|0:0|2026-11-26T06:15:16|2026-11-26T06:15:20
4|4|a|PREEMPTED|0:0|2026-11-26T06:15:16|2026-11-26T06:15:20
5|5|a|REQUEUED|0:0|Unknown|Unknown
6|6|a|COMPLETING|0:0|2026-11-26T06:15:16|Unknown
7|7|a|SOMETHING_NEW|0:0|None|2026-11-26T06:15:20
8|8|a|FAILED|0:9|2026-11-26T06:15:16|2026-11-26T06:15:20
"""
    )

    states = [aggregate(r.job_id, [r]) for r in rows]

    assert [s.state for s in states] == [
        "cancelled",
        "oom",
        "node_fail",
        "failed",
        "submitted",
        "running",
        "unknown_terminal",
        "failed",
    ]
    assert states[3].reason == "preempted"
    assert (states[7].exit_code, states[7].signal) == (0, 9)
    assert states[4].started_at is None and states[6].started_at is None


def test_array_index_ranges_expand() -> None:
    assert array_indices("123_4") == [4]
    assert array_indices("123_[5-9%2]") == [5, 6, 7, 8, 9]
    assert array_indices("123_[1,3-4]") == [1, 3, 4]
    assert array_indices("123_[0-6:3]") == [0, 3, 6]
    assert array_indices("123") == []


def test_next_interval_is_fast_after_a_change_and_backs_off_when_idle() -> None:
    executor = SlurmExecutor(min_interval=1, max_interval=8, accounting_down_interval=60)

    assert executor.next_interval(changed=True) == 1
    assert [executor.next_interval(changed=False) for _ in range(5)] == [2, 4, 8, 8, 8]
    assert executor.next_interval(changed=True) == 1
    executor.accounting_ok = False
    assert executor.next_interval(changed=False) == 60


def test_array_is_not_finished_while_accounting_lacks_element_rows(tmp_path: Path) -> None:
    # what sacct really printed for ~4 s after array 0-3%2 ended, before the rows of 0-2 (2 FAILED) arrived
    sacct = tmp_path / "sacct"
    sacct.write_text("#!/bin/sh\necho '73|73_3|wrap|COMPLETED|0:0|2026-11-26T06:20:01|2026-11-26T06:20:02'\n")
    sacct.chmod(0o755)
    executor = SlurmExecutor(bin_dir=tmp_path)

    state = executor.poll(["73"], arrays={"73": "0-3%2"})
    elements = executor.poll_array("73", spec="0-3%2")

    assert state.get("73") is not None and state["73"].state == "submitted"
    assert {i: e.state for i, e in elements.items()} == {0: "submitted", 1: "submitted", 2: "submitted", 3: "succeeded"}
    assert elements[0].reason == "not yet in accounting"


def test_a_terminal_row_without_end_time_is_not_yet_finished() -> None:
    # seen right after slurmdbd came back: the State arrives before the End
    (row,) = _rows("14|14|nodbd|COMPLETED|0:0|2026-11-26T06:14:18|Unknown")

    state = aggregate("14", [row])

    assert state.state == "running"
    assert state.exit_code is None
    assert "accounting incomplete" in (state.reason or "")
