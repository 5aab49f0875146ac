"""The local agent packs jobs by their GPUs (declared in cluster.toml ``[local]``), gives each job its own
devices, does not starve a big job behind small ones, and `labctl run` refuses a job that can never fit."""

from __future__ import annotations

import json
import os
import re
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


def write_cluster(tmp_path: Path, cpus: int = 16) -> Path:
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
    # the 2-GPU job started before any GPU job queued after it (the 0-GPU one may go ahead: it takes no GPU)
    assert all(stamps[big][1] < stamps[r][1] for r in later[:-1]), {r: stamps[r][1] for r in [big, *later]}
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
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "gpus" in proc.stderr and "9" in proc.stderr and "4" in proc.stderr, proc.stderr
    assert conn.execute("SELECT count(*) FROM events").fetchone() == before


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
