"""Recording a pipeline (``create_pipeline``): the pipeline, its runs and its first wave's submissions in one
append, the first wave's run dirs written before it; nothing of it kept when that append fails."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.test_agent_batches import app_for
from tests.test_submit_many import stream_types, submitted_of


def appended_types(patch: pytest.MonkeyPatch) -> list[list[str]]:
    """From now on (in ``patch``'s context), each append's event types, in order, in the list returned."""
    import projections

    appends: list[list[str]] = []
    record = projections.record

    def counted(on: psycopg.Connection[Any], batch: Any, **kwargs: Any) -> Any:
        appends.append([e.event.type_name for e in batch])
        return record(on, batch, **kwargs)

    patch.setattr(projections, "record", counted)
    return appends


STAGE_A = """\
name = "stage-a"
command = ["bash", "-c", 'mkdir -p "$1" && echo "$2" > "$1/out.txt" && touch "$1/DONE"', "x",
           "{outputs.data.path}", "{params.i}"]

[params]
i = "0"

[outputs.data]
type = "dataset"
marker = "DONE"
alias = "rec-a-{run.id}"
"""

STAGE_B = """\
name = "stage-b"
command = ["bash", "-c", 'test -f "$1/out.txt"', "x", "{inputs.data.path}"]

[inputs.data]
type = "stage"
stage = "a"
role = "data"
"""

TWO_STAGES = """\
name = "two-stage"

[stages.a]
recipe = "a.toml"

[stages.b]
recipe = "b.toml"
"""


@pytest.fixture
def plan(tmp_path: Path) -> Any:
    from labctl.files import load_pipeline

    (tmp_path / "a.toml").write_text(STAGE_A)
    (tmp_path / "b.toml").write_text(STAGE_B)
    (tmp_path / "two.toml").write_text(TWO_STAGES)
    return load_pipeline(tmp_path / "two.toml")


def test_a_pipeline_and_its_first_wave_are_one_append_written_after_the_roots_run_dir(
    conn: psycopg.Connection[Any], env: dict[str, str], plan: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import projections
    from labctl.pipelines.plan import create_pipeline

    appends: list[list[str]] = []
    dirs_then: list[bool] = []
    record = projections.record

    def counted(on: psycopg.Connection[Any], batch: Any, **kwargs: Any) -> Any:
        appends.append([e.event.type_name for e in batch])
        submitted = [e.event for e in batch if e.event.type_name == "RunSubmitted"]
        dirs_then.extend(Path(s.run_dir, ".lab", "context.json").is_file() for s in submitted)
        return record(on, batch, **kwargs)

    app = app_for(env, monkeypatch)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(projections, "record", counted)
            created = create_pipeline(app, plan)
    finally:
        app.close()
    # one append: the pipeline, its two waiting runs, the root's submission and its cache key claimed
    assert appends == [["PipelineCreated", "RunPending", "RunPending", "RunSubmitted", "CacheClaimed"]]
    assert dirs_then and all(dirs_then), "the root's run dir was written after the append that submits it"
    (a,), (b,) = created.runs["a"], created.runs["b"]
    assert stream_types(conn, f"run-{a}") == ["RunPending", "RunSubmitted"]
    assert stream_types(conn, f"run-{b}") == ["RunPending"]
    rows = dict(conn.execute("SELECT id, status FROM runs WHERE id = ANY(%s)", ([a, b],)).fetchall())
    assert rows == {a: "submitted", b: "created"}
    assert conn.execute("SELECT status FROM pipelines WHERE id = %s", (created.pipeline_id,)).fetchone() == ("running",)


def test_a_pipeline_whose_append_fails_records_nothing_and_leaves_no_run_dir(
    conn: psycopg.Connection[Any], env: dict[str, str], plan: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import projections
    from labctl.pipelines.plan import create_pipeline

    record = projections.record
    run_dirs: list[Path] = []

    def record_then_crash(on: psycopg.Connection[Any], batch: Any, **kwargs: Any) -> Any:
        run_dirs.extend(Path(e.event.run_dir) for e in batch if e.event.type_name == "RunSubmitted")
        record(on, batch, **kwargs)  # appended and projected, not committed
        raise RuntimeError("the submitter died")

    app = app_for(env, monkeypatch)
    before = conn.execute("SELECT count(*) FROM events").fetchone()
    try:
        with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="the submitter died"):
            patch.setattr(projections, "record", record_then_crash)
            create_pipeline(app, plan)
    finally:
        app.close()
    assert conn.execute("SELECT count(*) FROM events").fetchone() == before
    assert conn.execute("SELECT count(*) FROM pipelines").fetchone() == (0,)
    assert run_dirs and not any(d.exists() for d in run_dirs), "an unrecorded root's run dir was left behind"


def pipeline_status(conn: psycopg.Connection[Any], pipeline_id: str) -> str:
    row = conn.execute("SELECT status FROM pipelines WHERE id = %s", (pipeline_id,)).fetchone()
    return str(row[0]) if row else "missing"


def run_agent_until_ended(conn: psycopg.Connection[Any], app: Any, pipeline_id: str, reactors: Any) -> str:
    """An in-process agent ticking until the pipeline is closed (or a minute passed); its final state."""
    from labctl.agent import Agent

    agent = Agent(app, slots=2, reactors=reactors, poll_interval=0.05)
    deadline = time.monotonic() + 60
    agent.run(until=lambda: pipeline_status(conn, pipeline_id) != "running" or time.monotonic() > deadline)
    return pipeline_status(conn, pipeline_id)


def test_a_root_that_hits_the_cache_submits_its_child_in_the_same_transaction(
    conn: psycopg.Connection[Any], env: dict[str, str], plan: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first wave ended at once (a cache hit on a finished run): the next wave is submitted in the
    pipeline's transaction, as when the whole first wave went through the advance; no agent needed."""
    from labctl.pipelines.plan import create_pipeline
    from labctl.reactors import default_reactors

    app = app_for(env, monkeypatch)
    try:
        first = create_pipeline(app, plan)
        reactors = default_reactors(app, "test-agent", app.user)
        assert run_agent_until_ended(conn, app, first.pipeline_id, reactors) == "succeeded"
        second = create_pipeline(app, plan)  # the same params: its root hits the cache
    finally:
        app.close()
    (a2,), (b2,) = second.runs["a"], second.runs["b"]
    assert stream_types(conn, f"run-{a2}")[:3] == ["RunPending", "RunSubmitted", "RunCacheHit"]
    assert stream_types(conn, f"run-{b2}")[:2] == ["RunPending", "RunSubmitted"]
    rows = dict(conn.execute("SELECT id, status FROM runs WHERE id = ANY(%s)", ([a2, b2],)).fetchall())
    assert rows[a2] == "cache_hit" and rows[b2] in {"queued", "cache_hit"}


def test_an_agents_jobs_ends_submit_the_children_they_release_and_close_the_pipeline_without_the_advancer(
    conn: psycopg.Connection[Any], env: dict[str, str], plan: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ends of a tick and what they release commit together: an agent with no reactor at all
    still runs the child once its parent succeeded, and closes the pipeline."""
    from labctl.pipelines.plan import create_pipeline

    app = app_for(env, monkeypatch)
    try:
        created = create_pipeline(app, plan)
        assert run_agent_until_ended(conn, app, created.pipeline_id, reactors=()) == "succeeded"
    finally:
        app.close()
    (a,), (b,) = created.runs["a"], created.runs["b"]
    rows = dict(conn.execute("SELECT id, status FROM runs WHERE id = ANY(%s)", ([a, b],)).fetchall())
    assert rows == {a: "succeeded", b: "succeeded"}
    assert stream_types(conn, f"run-{b}").count("RunSubmitted") == 1


def test_run_pipeline_each_records_one_pipeline_per_value_in_one_append(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path, plan: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run-pipeline --each params.i=0..2``: three pipelines, each what ``run-pipeline --set params.i=V``
    records (the pipeline, its waiting runs, its root submitted with the value), all in one append."""
    from labctl.pipelines.plan import run_pipelines

    app = app_for(env, monkeypatch)
    try:
        with monkeypatch.context() as patch:
            appends = appended_types(patch)
            created = run_pipelines(app, tmp_path / "two.toml", "params.i=0..2")
    finally:
        app.close()
    assert len(appends) == 1
    assert sorted(appends[0]) == sorted(
        3 * ["PipelineCreated", "RunPending", "RunPending", "RunSubmitted", "CacheClaimed"]
    )
    assert len({c.pipeline_id for c in created}) == 3
    for value, c in enumerate(created):
        (a,), (b,) = c.runs["a"], c.runs["b"]
        assert stream_types(conn, f"run-{a}") == ["RunPending", "RunSubmitted"]
        assert stream_types(conn, f"run-{b}") == ["RunPending"]
        row = conn.execute(
            "SELECT data -> 'recipe' -> 'params' ->> 'i' FROM events WHERE stream = %s AND type = 'RunSubmitted'",
            (f"run-{a}",),
        ).fetchone()
        assert row == (str(value),)
        assert conn.execute("SELECT status FROM pipelines WHERE id = %s", (c.pipeline_id,)).fetchone() == ("running",)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--each", "params.i=3..1"], "the range is empty"),
        (["--each", "params.i=0..x"], "two integers"),
        (["--each", "params.i"], "expected KEY=V1,V2"),
        (["--each", "params.nope=0..1"], "no stage's recipe has that key"),
        (["--each", "params.i=1,1"], "a value given twice"),
        (["--each", "params.i=0..1", "--wait"], "--wait follows one pipeline"),
    ],
)
def test_run_pipeline_each_refuses_bad_values_in_one_line_and_records_nothing(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path, plan: Any, args: list[str], said: str
) -> None:
    from tests.conftest import run_cli

    before = conn.execute("SELECT count(*) FROM events").fetchone()
    proc = run_cli(env, "run-pipeline", str(tmp_path / "two.toml"), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert said in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert conn.execute("SELECT count(*) FROM events").fetchone() == before


def test_run_pipeline_each_prints_every_pipeline(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path, plan: Any
) -> None:
    import json

    from tests.conftest import run_cli

    proc = run_cli(env, "run-pipeline", str(tmp_path / "two.toml"), "--each", "params.i=a,b", "--json", check=True)
    shown = json.loads(proc.stdout)
    assert len(shown) == 2
    ids = [s["pipeline_id"] for s in shown]
    rows = conn.execute("SELECT count(*) FROM pipelines WHERE id = ANY(%s)", (ids,)).fetchone()
    assert rows == (2,)


def _one_closing_one_releasing(app: Any, conn: psycopg.Connection[Any], tmp_path: Path) -> tuple[str, str, str]:
    """Two pipelines: the first with every run ended (to close), the second with stage a succeeded and its b
    waiting (to submit); neither advanced yet. Their ids and the second's b."""
    from labctl.executors.base import JobState
    from labctl.local_runs import finish_many
    from labctl.pipelines.advance import advance_many
    from labctl.pipelines.plan import run_pipelines

    one, two = run_pipelines(app, tmp_path / "two.toml", "params.i=0..1")
    roots = [one.runs["a"][0], two.runs["a"][0]]
    for run_id in roots:  # as the job would: its output and marker
        out = Path(submitted_of(conn, run_id).outputs[0].path)
        out.mkdir(parents=True, exist_ok=True)
        (out / "out.txt").write_text(f"{run_id}\n")  # different bytes: the b runs do not share a cache key
        (out / "DONE").touch()
    succeeded = JobState(job_id="", state="succeeded", exit_code=0)
    finish_many(app, [(run_id, succeeded) for run_id in roots])  # no ``then``: nothing advanced
    advance_many(app, [one.pipeline_id])
    finish_many(app, [(one.runs["b"][0], succeeded)])
    return one.pipeline_id, two.pipeline_id, two.runs["b"][0]


def test_pipelines_that_close_go_in_the_append_of_the_children_released_with_them(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path, plan: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labctl.pipelines.advance import advance_many

    app = app_for(env, monkeypatch)
    try:
        closing, releasing, child = _one_closing_one_releasing(app, conn, tmp_path)
        with monkeypatch.context() as patch:
            appends = appended_types(patch)
            assert advance_many(app, [closing, releasing])
    finally:
        app.close()
    assert len(appends) == 1
    assert "PipelineFinished" in appends[0] and "RunSubmitted" in appends[0]
    assert (pipeline_status(conn, closing), pipeline_status(conn, releasing)) == ("succeeded", "running")
    assert stream_types(conn, f"run-{child}").count("RunSubmitted") == 1


def test_a_pipeline_closed_by_another_agent_meanwhile_does_not_keep_the_children_released_with_it_from_running(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path, plan: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close and the children's submissions share one append; when the close loses its race, the children
    are still submitted (one by one) and the pipeline stays closed once."""
    from labctl.pipelines import advance

    app = app_for(env, monkeypatch)
    other = app_for(env, monkeypatch)
    try:
        closing, releasing, child = _one_closing_one_releasing(app, conn, tmp_path)
        load_many = advance.load_many
        raced: list[bool] = []

        def read_then_lose_the_race(on: psycopg.Connection[Any], ids: Any) -> Any:
            loaded = load_many(on, ids)
            if on is app.db.conn and not raced:  # another agent closes the pipeline between this read and this append
                raced.append(advance.advance_many(other, [closing]))
            return loaded

        monkeypatch.setattr(advance, "load_many", read_then_lose_the_race)
        assert advance.advance_many(app, [closing, releasing])
    finally:
        app.close()
        other.close()
    assert raced == [True]
    assert stream_types(conn, f"pipeline-{closing}").count("PipelineFinished") == 1
    assert stream_types(conn, f"run-{child}").count("RunSubmitted") == 1
    assert conn.execute("SELECT status FROM runs WHERE id = %s", (child,)).fetchone() == ("submitted",)
