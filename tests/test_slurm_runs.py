"""Runs on the real SLURM cluster, end to end through the `labctl` CLI (issue 6).

Every test writes a cluster.toml with ``[scheduler] kind = "slurm"`` (run dirs
and artifact roots on local disk: the cluster is one node), submits with the
real CLI, and brings SLURM's answer into the log with ``labctl reconcile`` (or
an agent, where a pipeline has to advance). Tests are marked ``slurm``: skipped
without sbatch/sacct unless LABCTL_REQUIRE_SLURM is set, then failing.

The TIMEOUT case takes 60-90 s (SLURM's smallest limit is a minute, checked
every ~30 s), so its run is submitted once when the module starts, into its
own database, and checked by the last test while the others ran meanwhile.
Only jobs these tests submitted are ever cancelled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from labctl.db import connect
from labctl.layout import find_job_log
from tests.conftest import REPO, _with_dbname, run_cli

DATA = Path(__file__).resolve().parent / "data" / "slurm"
USER = "alice"
#: a tiny job starts and ends within seconds; the deadline matters only when the node is busy
JOB_DEADLINE = 150.0
#: a one-minute limit ends as TIMEOUT after 60 s plus up to one slurmctld sweep (observed 87 s)
TIMEOUT_DEADLINE = 240.0
TERMINAL = {"succeeded", "failed", "cancelled", "timeout", "oom", "node_fail", "dependency_failed", "cache_hit"}
TERMINAL |= {"unknown_terminal"}

pytestmark = pytest.mark.slurm


def _require_slurm() -> None:
    missing = [c for c in ("sbatch", "sacct", "squeue", "scancel") if shutil.which(c) is None]
    if missing:
        message = f"SLURM commands not on PATH: {', '.join(missing)} (run scripts/slurm-up.sh)"
        if os.environ.get("LABCTL_REQUIRE_SLURM"):
            pytest.fail(message)
        pytest.skip(message)


# ------------------------------------------------------------------ the lab


def write_cluster_toml(directory: Path) -> Path:
    """A SLURM cluster config whose storage roots all live under ``directory``."""
    kinds = ("dataset", "model", "eval_result", "checkpoint")
    outputs = ("dataset", "model", "eval_result", "checkpoint_stream")
    lines = [
        'name = "slurm-test"',
        "",
        "[filesystem]",
        f'runs_base = "{directory}/runs"',
        "",
        "[filesystem.artifact_roots]",
        *(f'{k} = "{directory}/artifacts/{k}"' for k in kinds),
        "",
        "[filesystem.output_roots]",
        *(f'{k} = "{directory}/outputs/{k}"' for k in outputs),
        "",
        "[scheduler]",
        'kind = "slurm"',
        "",
        "[dispatch]",
        "reconcile_interval_secs = 1",
    ]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Lab:
    """One test's world: the CLI's environment, its database and its directory."""

    env: dict[str, str]
    conn: psycopg.Connection[Any]
    directory: Path

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_cli(self.env, *args, check=check, timeout=timeout)

    def run(self, recipe: Path, *args: str) -> tuple[str, str]:
        """`labctl run RECIPE` on SLURM; (run id, job id) as printed."""
        out = self.cli("run", str(recipe), *args).stdout
        return printed(out, "run_id"), printed(out, "job_id")

    def reconcile(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.cli("reconcile").stdout)
        return report

    def row(self, run_id: str) -> dict[str, Any]:
        cur = self.conn.execute("SELECT * FROM runs WHERE id = %s", (run_id,))
        found = cur.fetchone()
        assert found is not None, f"no run {run_id}"
        return dict(zip([d.name for d in cur.description or []], found, strict=True))

    def status(self, run_id: str) -> str:
        return str(self.row(run_id)["status"])

    def wait_status(self, run_id: str, wanted: set[str], deadline: float = JOB_DEADLINE) -> str:
        """Reconcile until the run is in one of ``wanted``."""
        give_up = time.monotonic() + deadline
        while (status := self.status(run_id)) not in wanted:
            if time.monotonic() > give_up:
                pytest.fail(f"{run_id} stayed {status} for {deadline:g} s (wanted {sorted(wanted)})")
            self.reconcile()
            time.sleep(0.5)
        return status

    def settle(self, run_ids: list[str], deadline: float = JOB_DEADLINE) -> dict[str, str]:
        """Reconcile until every run has ended; their final states."""
        give_up = time.monotonic() + deadline
        while True:
            states = {r: self.status(r) for r in run_ids}
            if all(s in TERMINAL for s in states.values()):
                return states
            if time.monotonic() > give_up:
                pytest.fail(f"runs did not end within {deadline:g} s: {states}")
            self.reconcile()
            time.sleep(0.5)

    def explain(self, *run_ids: str) -> str:
        """Each run's state, reason and log tail, for a failing assertion's message."""
        parts = []
        for run_id in run_ids:
            row = self.row(run_id)
            log = find_job_log(row["run_dir"])
            tail = log.read_text()[-800:] if log else "(no log)"
            parts.append(f"{run_id} {row['status']} exit={row['exit_code']} reason={row['reason']!r}\n{tail}")
        return "\n".join(parts)

    def event_types(self, run_id: str) -> list[str]:
        rows = self.conn.execute("SELECT type FROM events WHERE stream = %s ORDER BY version", (f"run-{run_id}",))
        return [r[0] for r in rows.fetchall()]

    def cancel_leftovers(self) -> None:
        """scancel the jobs of this lab's runs that have not ended (never anyone else's)."""
        rows = self.conn.execute(
            "SELECT job_id FROM runs WHERE executor = 'slurm' AND job_id IS NOT NULL AND NOT (status = ANY(%s))",
            (list(TERMINAL),),
        ).fetchall()
        job_ids = sorted({r[0].split("_")[0] for r in rows})
        if job_ids:
            subprocess.run(["scancel", *job_ids], check=False, capture_output=True)


def printed(stdout: str, key: str) -> str:
    found = re.search(rf"^{key}: (\S+)$", stdout, re.MULTILINE)
    assert found, f"no '{key}:' line in:\n{stdout}"
    return found.group(1)


def stage_runs(stdout: str, stage: str) -> list[str]:
    """The run ids of a ``stage NAME: run_a, run_b`` line that run-pipeline / run-sweep print."""
    found = re.search(rf"^stage {re.escape(stage)}: (.+)$", stdout, re.MULTILINE)
    assert found, f"no 'stage {stage}:' line in:\n{stdout}"
    return found.group(1).split(", ")


def lab_env(base: dict[str, str], db_url: str, directory: Path) -> dict[str, str]:
    return {
        **base,
        "LABCTL_DATABASE_URL": db_url,
        "LABCTL_HOME": str(directory / "home"),
        "LABCTL_CLUSTER": str(write_cluster_toml(directory)),
        "LABCTL_USER": USER,
        "LABCTL_SLURM_RECOVERY_GRACE": "1",
    }


@pytest.fixture
def lab(labctl_env: dict[str, str], db_url: str, tmp_path: Path) -> Iterator[Lab]:
    _require_slurm()
    with connect(db_url) as conn:
        state = Lab(lab_env(labctl_env, db_url, tmp_path), conn, tmp_path)
        try:
            yield state
        finally:
            state.cancel_leftovers()


@dataclass
class TimeoutRun:
    lab: Lab
    run_id: str
    job_id: str


@pytest.fixture(scope="module", autouse=True)
def timeout_run(server_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TimeoutRun]:
    """The minute-limited run, submitted before every other test so its TIMEOUT arrives while they run."""
    _require_slurm()
    name = f"labctl_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    url = _with_dbname(server_url, name)
    directory = tmp_path_factory.mktemp("slurm-timeout")
    env = lab_env({**os.environ, "XDG_CONFIG_HOME": str(directory / "xdg")}, url, directory)
    try:
        with connect(url) as conn:
            lab = Lab(env, conn, directory)
            run_id, job_id = lab.run(DATA / "timeout.toml")
            try:
                yield TimeoutRun(lab, run_id, job_id)
            finally:
                lab.cancel_leftovers()
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def accounting_down() -> Iterator[None]:
    """slurmdbd stopped for the block (sbatch, squeue, scancel keep working); always started again."""
    down = subprocess.run(["bash", str(REPO / "scripts" / "slurm-down.sh"), "slurmdbd"], capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    try:
        yield
    finally:
        up = subprocess.run(["bash", str(REPO / "scripts" / "slurm-up.sh")], capture_output=True, text=True)
        assert up.returncode == 0, up.stderr


def squeue_carrying(key: str) -> list[str]:
    """Job ids slurmctld lists with ``--comment=<key>`` (a run or sweep id)."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%k"], capture_output=True, text=True)
    return [job for job, _, comment in (line.partition("|") for line in out.stdout.splitlines()) if comment == key]


def sacct_carrying(key: str) -> list[str]:
    """Job ids accounting knows running in a directory named ``<key>`` (the run dir, or a sweep's)."""
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "--starttime", "now-1hour", "-o", "JobID,WorkDir"],
        capture_output=True,
        text=True,
    )
    return [
        job
        for job, _, workdir in (line.partition("|") for line in out.stdout.splitlines())
        if Path(workdir).name == key
    ]


# ------------------------------------------------------------------ outcomes


def test_run_exiting_zero_succeeds_and_registers_the_node_side_hash(lab: Lab) -> None:
    from labctl.artifacts import dir_content_hash

    run_id, job_id = lab.run(DATA / "ok.toml")
    assert job_id.isdigit()
    assert lab.row(run_id)["job_id"] == job_id

    assert lab.settle([run_id]) == {run_id: "succeeded"}

    shown = json.loads(lab.cli("show", run_id).stdout)
    assert shown["exit_code"] == 0
    [output] = shown["outputs"]
    assert output["role"] == "data"
    manifest = json.loads((Path(shown["run_dir"]) / ".lab" / "output_hashes.json").read_text())
    digest = manifest["data"]  # written on the compute node by `labctl hash-outputs` in the job script
    assert output["artifact_id"] == f"artifact_{digest[:16]}"
    stored = Path(output["path"])
    assert stored == lab.directory / "artifacts" / "dataset" / "_objects" / digest[:2] / digest
    assert (stored / "greeting.txt").read_text() == "hello\n"
    assert dir_content_hash(stored, exclude_top=(".meta.json",)) == digest
    assert lab.event_types(run_id).count("JobSubmitted") == 1


def test_run_exiting_3_fails_with_exit_code_3_and_registers_nothing(lab: Lab) -> None:
    run_id, _ = lab.run(DATA / "exit3.toml")

    assert lab.settle([run_id]) == {run_id: "failed"}

    row = lab.row(run_id)
    assert row["exit_code"] == 3
    assert json.loads(lab.cli("show", run_id).stdout)["outputs"] == []
    assert not (Path(row["run_dir"]) / ".lab" / "output_hashes.json").exists()


def test_cancel_of_a_running_run_ends_it_cancelled(lab: Lab) -> None:
    run_id, job_id = lab.run(DATA / "sleep.toml")
    lab.wait_status(run_id, {"running"})

    assert lab.cli("cancel", run_id).stdout.strip() == f"{run_id}: requested"

    assert lab.settle([run_id]) == {run_id: "cancelled"}
    assert squeue_carrying(run_id) in ([], [job_id])  # gone, or still listed as ended


def test_cancel_of_a_pipeline_scancels_its_jobs_and_ends_its_waiting_stage(lab: Lab) -> None:
    out = lab.cli("run-pipeline", str(DATA / "cancel_pipeline" / "pipeline.toml"), "--no-json").stdout
    pipeline_id = printed(out, "pipeline_id")
    [first], [second], [after] = (stage_runs(out, s) for s in ("first", "second", "after"))
    jobs = dict(re.findall(r"^(run_\S+): job (\S+)$", out, re.MULTILINE))
    assert set(jobs) == {first, second}  # the roots went to SLURM at once; `after` waits for `first`
    lab.wait_status(first, {"running"})

    cancelled = lab.cli("cancel", pipeline_id).stdout.splitlines()

    assert sorted(cancelled) == sorted([f"{first}: requested", f"{second}: requested", f"{after}: cancelled"])
    assert lab.settle([first, second, after]) == {first: "cancelled", second: "cancelled", after: "cancelled"}
    lab.cli("agent", "--drain", timeout=60)  # the advancer closes the pipeline
    view = json.loads(lab.cli("pipeline-show", pipeline_id, "--json").stdout)
    assert view["status"] == "cancelled"


# ------------------------------------------------------------------ sweeps and pipelines


def test_sweep_is_one_job_array_and_a_failing_point_fails_only_itself(lab: Lab) -> None:
    proc = lab.cli("run-sweep", str(DATA / "sweep.toml"), "--wait", check=False, timeout=JOB_DEADLINE + 60)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a point failed, so the sweep did
    pipeline_id = printed(proc.stdout, "pipeline_id")
    points = stage_runs(proc.stdout, "slurm-sweep")
    [aggregate] = stage_runs(proc.stdout, "aggregate")

    rows = [lab.row(p) for p in points]
    assert [r["sweep_index"] for r in rows] == [0, 1, 2, 3]
    array_ids = {r["job_id"].split("_")[0] for r in rows}
    assert len(array_ids) == 1, f"one sbatch, one array: {[r['job_id'] for r in rows]}"
    [array_id] = array_ids
    assert [r["job_id"] for r in rows] == [f"{array_id}_{i}" for i in range(4)]
    assert [r["status"] for r in rows] == ["succeeded", "succeeded", "failed", "succeeded"]
    assert rows[2]["exit_code"] == 1
    assert lab.status(aggregate) == "dependency_failed"
    assert lab.row(aggregate)["job_id"] is None
    assert json.loads(lab.cli("pipeline-show", pipeline_id, "--json").stdout)["status"] == "failed"


def test_pipeline_rerun_takes_stage_one_from_the_cache_without_a_job(lab: Lab) -> None:
    folder = lab.directory / "pipeline"
    shutil.copytree(DATA / "pipeline", folder)

    def run_pipeline() -> tuple[str, dict[str, str], str]:
        proc = lab.cli(
            "run-pipeline", str(folder / "pipeline.toml"), "--no-json", "--wait", check=False, timeout=JOB_DEADLINE * 2
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        stages = {s: stage_runs(proc.stdout, s)[0] for s in ("prep", "train", "eval")}
        return printed(proc.stdout, "pipeline_id"), stages, proc.stdout

    first_id, first, _ = run_pipeline()
    assert {s: lab.status(r) for s, r in first.items()} == dict.fromkeys(first, "succeeded")
    assert all(lab.row(r)["job_id"] for r in first.values())
    # a changed training recipe: the same prep, new train and eval
    train = folder / "train.toml"
    train.write_text(train.read_text().replace("round = 1", "round = 2"))
    jobs_before = {r[0] for r in lab.conn.execute("SELECT job_id FROM runs WHERE job_id IS NOT NULL").fetchall()}

    second_id, second, _ = run_pipeline()

    assert second_id != first_id
    assert {s: lab.status(r) for s, r in second.items()} == {
        "prep": "cache_hit",
        "train": "succeeded",
        "eval": "succeeded",
    }
    assert lab.row(second["prep"])["job_id"] is None
    assert "JobSubmitted" not in lab.event_types(second["prep"])
    assert not {lab.row(second[s])["job_id"] for s in ("train", "eval")} & jobs_before
    assert squeue_carrying(second["prep"]) == []
    # the new training read what the first prep produced
    prep_output = json.loads(lab.cli("show", first["prep"]).stdout)["outputs"][0]["artifact_id"]
    train_inputs = json.loads(lab.cli("show", second["train"]).stdout)["inputs"]
    assert [i["artifact_id"] for i in train_inputs] == [prep_output]


# ------------------------------------------------------------------ exactly once, accounting


def submit_then_crash(lab: Lab, monkeypatch: pytest.MonkeyPatch, secs: int) -> tuple[str, str]:
    """Record a run's intent and sbatch it as the submitter does, then "die" before JobSubmitted.

    Returns (run id, job id); the log knows the intent but not the job.
    """
    import events
    from events import NewEvent
    from events.types import SubmissionIntended
    from labctl.app import open_app
    from labctl.executors.slurm import SlurmExecutor
    from labctl.files import Recipe, load_recipe
    from labctl.slurm_runs import _render_single, slurm_job_name
    from labctl.submissions import submission_of
    from labctl.submit import apply_overrides, submit

    with monkeypatch.context() as patch:
        for key, value in lab.env.items():
            patch.setenv(key, value)
        app = open_app()
    try:
        recipe_path = DATA / "sleep.toml"
        recipe = apply_overrides(load_recipe(recipe_path), [f"params.secs={secs}"])
        run_id = submit(app, recipe, recipe_path, executor="slurm").run_id
        version = events.stream_version(app.db.conn, f"run-{run_id}")
        intent = SubmissionIntended(
            run_id=run_id, executor="slurm", job_name=slurm_job_name(recipe.name), agent_id="crashed"
        )
        app.record([NewEvent(f"run-{run_id}", intent, version)], f"intent-{uuid.uuid4().hex}")
        sub = submission_of(app.db.conn, run_id)
        assert sub is not None
        rendered = msgspec.convert(sub.recipe, Recipe)  # as the submitter renders it: tokens resolved
        job_id = SlurmExecutor().submit(_render_single(app, sub, rendered))
    finally:
        app.close()
    assert lab.row(run_id)["job_id"] is None
    return run_id, job_id


def assert_one_job_carrying(key: str, job_id: str) -> None:
    """SLURM knows exactly one job (or one array) carrying this run or sweep id; accounting learns of it
    seconds after the job."""

    def bases(ids: list[str]) -> set[str]:
        return {i.split("_")[0] for i in ids}

    assert bases(squeue_carrying(key)) <= {job_id}
    give_up = time.monotonic() + 30
    while (found := bases(sacct_carrying(key))) != {job_id} and time.monotonic() < give_up:
        time.sleep(1)
    assert found == {job_id}, f"jobs carrying {key}: {found}"


def test_reconcile_finds_a_job_submitted_before_a_crash_by_the_run_id_it_carries(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The submitter died after sbatch and before recording JobSubmitted: recovery adopts the job, never resubmits."""
    run_id, job_id = submit_then_crash(lab, monkeypatch, secs=4)
    time.sleep(1.5)  # past LABCTL_SLURM_RECOVERY_GRACE

    report = lab.reconcile()

    assert report["submitted"] == 0
    assert report["recovered"] == 1
    assert lab.row(run_id)["job_id"] == job_id
    assert lab.settle([run_id]) == {run_id: "succeeded"}, lab.explain(run_id)
    assert lab.event_types(run_id).count("JobSubmitted") == 1
    assert_one_job_carrying(run_id, job_id)


def test_recovery_during_an_accounting_outage_does_not_submit_a_second_job(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sacct down and the job already gone from squeue: "not found" is unknown, not "never submitted"."""
    with accounting_down():
        run_id, job_id = submit_then_crash(lab, monkeypatch, secs=1)
        give_up = time.monotonic() + 90
        while squeue_carrying(run_id):  # finished, then purged by slurmctld after MinJobAge
            assert time.monotonic() < give_up, "the job stayed in squeue"
            time.sleep(1)

        for _ in range(2):  # the intent is long past 4 x the grace; a resubmission would sbatch on the 2nd pass
            report = lab.reconcile()
            assert (report["recovered"], report["submitted"], report["accounting_ok"]) == (0, 0, False)
        assert squeue_carrying(run_id) == []
        assert lab.row(run_id)["job_id"] is None

    give_up = time.monotonic() + JOB_DEADLINE
    while lab.row(run_id)["job_id"] is None:
        assert time.monotonic() < give_up, "the job was not recovered once accounting was back"
        lab.reconcile()
        time.sleep(1)
    assert lab.row(run_id)["job_id"] == job_id
    assert lab.settle([run_id]) == {run_id: "succeeded"}, lab.explain(run_id)
    assert "SubmissionIntended" in lab.event_types(run_id)
    assert lab.event_types(run_id).count("JobSubmitted") == 1
    assert_one_job_carrying(run_id, job_id)


class Crash(Exception):
    """The submitter dies right after sbatch, before it records the job id."""


def test_reconcile_recovers_every_point_of_a_sweep_array_submitted_before_a_crash(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labctl import slurm_runs
    from labctl.app import open_app
    from labctl.executors.slurm import SlurmExecutor
    from labctl.files import load_recipe
    from labctl.pipelines.plan import run_sweep

    def crash(*args: object, **kwargs: object) -> None:
        raise Crash

    with monkeypatch.context() as patch:
        for key, value in lab.env.items():
            patch.setenv(key, value)
        app = open_app()
    try:
        recipe_path = DATA / "sweep.toml"
        started = run_sweep(app, load_recipe(recipe_path), recipe_path, executor="slurm")
        points = started.runs["slurm-sweep"]
        monkeypatch.setattr(slurm_runs, "_record_jobs", crash)
        with pytest.raises(Crash):
            slurm_runs.submit_queued(app, SlurmExecutor(), "crashed", run_ids=points)
        monkeypatch.undo()
    finally:
        app.close()
    assert started.sweep_id is not None
    [array_id] = squeue_carrying(started.sweep_id) or [""]
    assert array_id, "the array was submitted"
    assert [lab.row(p)["job_id"] for p in points] == [None] * 4
    time.sleep(1.5)  # past LABCTL_SLURM_RECOVERY_GRACE

    report = lab.reconcile()

    assert (report["recovered"], report["submitted"]) == (4, 0)
    base = array_id.split("_")[0]
    assert [lab.row(p)["job_id"] for p in points] == [f"{base}_{i}" for i in range(4)]
    states = lab.settle(points)
    assert [states[p] for p in points] == ["succeeded", "succeeded", "failed", "succeeded"], lab.explain(*points)
    assert_one_job_carrying(started.sweep_id, base)


def test_reconcile_submits_again_when_the_submitter_died_before_sbatch(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An intent with no job carrying its run id anywhere, long after the grace: the job never existed, so submit it."""
    from labctl import slurm_runs
    from labctl.app import open_app
    from labctl.executors.slurm import SlurmExecutor

    class DiesBeforeSbatch(SlurmExecutor):
        def submit(self, job: object) -> str:
            raise Crash

    with monkeypatch.context() as patch:
        for key, value in lab.env.items():
            patch.setenv(key, value)
        app = open_app()
    try:
        from labctl.files import load_recipe
        from labctl.submit import apply_overrides, submit

        recipe_path = DATA / "sleep.toml"
        recipe = apply_overrides(load_recipe(recipe_path), ["params.secs=1"])
        run_id = submit(app, recipe, recipe_path, executor="slurm").run_id
        with pytest.raises(Crash):
            slurm_runs.submit_queued(app, DiesBeforeSbatch(), "crashed", run_ids=[run_id])
    finally:
        app.close()
    assert "SubmissionIntended" in lab.event_types(run_id)
    time.sleep(4.5)  # past 4 x LABCTL_SLURM_RECOVERY_GRACE, when "not found" means "never submitted"

    lab.reconcile()  # finds no job carrying the run id: submits the run again
    lab.reconcile()

    job_id = lab.row(run_id)["job_id"]
    assert job_id is not None
    assert lab.settle([run_id]) == {run_id: "succeeded"}, lab.explain(run_id)
    assert_one_job_carrying(run_id, job_id)


def test_reconcile_of_several_active_runs_makes_one_sacct_call(lab: Lab) -> None:
    run_ids = [lab.run(DATA / "sleep.toml", "--set", f"params.i={i}", "--set", "params.secs=3")[0] for i in range(3)]

    report = lab.reconcile()

    assert report["active"] == 3
    assert report["sacct_calls"] == 1
    while len([r for r in run_ids if lab.status(r) not in TERMINAL]) > 1:
        report = lab.reconcile()
        assert report["sacct_calls"] == 1
        time.sleep(0.5)
    assert set(lab.settle(run_ids).values()) == {"succeeded"}


def test_reconcile_during_an_accounting_outage_records_nothing_false_and_catches_up(lab: Lab) -> None:
    with accounting_down():
        ok, ok_job = lab.run(DATA / "ok.toml", "--set", "params.i=7")
        failing, fail_job = lab.run(DATA / "exit3.toml")
        # both end while accounting is down: slurmctld knows, sacct cannot say
        give_up = time.monotonic() + JOB_DEADLINE
        while squeue_states([ok_job, fail_job]) - {"COMPLETED", "FAILED"}:
            assert time.monotonic() < give_up, f"jobs did not end: {squeue_states([ok_job, fail_job])}"
            time.sleep(0.5)

        report = lab.reconcile()

        assert report["accounting_ok"] is False
        assert report["finished"] == 0
        assert lab.status(ok) in ("submitted", "running")
        assert lab.status(failing) in ("submitted", "running")
        assert "RunFinished" not in lab.event_types(ok) + lab.event_types(failing)

    assert lab.settle([ok, failing]) == {ok: "succeeded", failing: "failed"}
    assert lab.row(failing)["exit_code"] == 3
    assert json.loads(lab.cli("show", ok).stdout)["outputs"] != []
    assert lab.reconcile()["accounting_ok"] is True


def squeue_states(job_ids: list[str]) -> set[str]:
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%T", "-j", ",".join(job_ids)], capture_output=True, text=True
    )
    states = set(out.stdout.split())
    return states if len(out.stdout.split()) == len(job_ids) else states | {"UNKNOWN"}


# ------------------------------------------------------------------ the slow one, last


def test_run_past_its_time_limit_ends_timeout(timeout_run: TimeoutRun) -> None:
    lab, run_id = timeout_run.lab, timeout_run.run_id
    assert timeout_run.job_id.isdigit()

    assert lab.settle([run_id], deadline=TIMEOUT_DEADLINE) == {run_id: "timeout"}
    assert lab.row(run_id)["job_id"] == timeout_run.job_id
