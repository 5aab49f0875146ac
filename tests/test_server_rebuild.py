"""A rebuild computes the artifacts, aliases, run_outputs, run_inputs, pipelines, pipeline_stages, sweeps,
evals, metric_files, imported_runs, users, imported_evals and imported_artifacts tables in the server
(projections/queries.sql) while appends project them in Python (the handlers in projections/): both must
give the same rows, column by column, and the audit must compare them."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import psycopg
from psycopg import sql

import events
from events import NewEvent
from events.types import (
    AliasImported,
    AliasRemoved,
    AliasSet,
    ArtifactImported,
    ArtifactRegistered,
    ArtifactsCollected,
    EvalImported,
    EvalRecorded,
    EvalRequested,
    InputRef,
    MetricPoint,
    MetricsLogged,
    OriginalEvent,
    OriginalEventsImported,
    OutputLinked,
    PipelineCreated,
    PipelineFinished,
    PipelineImported,
    RunImported,
    RunStatusImported,
    RunSubmitted,
    StageSpec,
    SweepCreated,
    SweepFinished,
    TrackingLink,
    UserImported,
)
from labctl import gc
from labctl.app import App
from projections.base import MemoryRows, State, Table
from projections.engine import (
    _copy_rows,
    all_tables,
    apply,
    catch_up,
    diff_live,
    replay_as_of,
    replay_live,
    scan_events,
)
from tests.conftest import run_cli
from tests.test_artifact_commands import _gc_world, app  # noqa: F401 (app: the fixture)
from tests.test_import import _add_runs, _source, registry  # noqa: F401 (registry: the fixture)
from tests.test_pipelines_acceptance import DATA

# The tables this file covers (runs and metrics have tests of their own).
TABLES = [
    "artifacts",
    "aliases",
    "run_outputs",
    "run_inputs",
    "pipelines",
    "pipeline_stages",
    "sweeps",
    "evals",
    "metric_files",
    "imported_runs",
    "users",
    "imported_evals",
    "imported_artifacts",
]
Rows = dict[str, dict[tuple[str, ...], dict[str, str | None]]]


def _table(name: str) -> Table[Any]:
    return next(t for t in all_tables() if t.name == name)


def test_every_table_here_is_computed_by_the_server_in_a_rebuild() -> None:
    assert all(_table(name).rebuild_query is not None for name in TABLES)


def _as_text(
    conn: psycopg.Connection[Any], schema: str, table: Table[Any]
) -> dict[tuple[str, ...], dict[str, str | None]]:
    """Each row's columns as Postgres prints them (json as jsonb text, times to the microsecond), by key."""
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in table.columns),
        sql.Identifier(schema, table.name),
    )
    out = {}
    for values in conn.execute(query):
        row = dict(zip(table.columns, values, strict=True))
        out[tuple(str(row[k]) for k in table.key)] = row
    return out


def _python_fold(conn: psycopg.Connection[Any]) -> Rows:
    """The handlers' rows for the whole log, every table folded in memory (as rebuilds did before the
    server computed them), written to a scratch schema so that Postgres prints them as it prints the
    server's."""
    with conn.transaction():
        state = State(MemoryRows)
        apply(state, scan_events(conn, events.last_position(conn)))
    conn.execute("DROP SCHEMA IF EXISTS python_fold CASCADE")
    conn.execute("CREATE SCHEMA python_fold")
    out: Rows = {}
    for name in TABLES:
        table = _table(name)
        target = sql.Identifier("python_fold", name)
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(target, sql.Identifier("live", name)))
        rows = state.rows(table)
        assert isinstance(rows, MemoryRows)
        _copy_rows(conn, "python_fold", table, rows.rows.values())
        out[name] = _as_text(conn, "python_fold", table)
    conn.commit()
    return out


def _live(conn: psycopg.Connection[Any], schema: str = "live") -> Rows:
    return {name: _as_text(conn, schema, _table(name)) for name in TABLES}


def _differences(want: Rows, got: Rows) -> list[str]:
    """Every key and column where ``got`` differs from ``want``, one line each."""
    lines = []
    for name in TABLES:
        for key in sorted(want[name].keys() | got[name].keys()):
            w, g = want[name].get(key), got[name].get(key)
            if w is None or g is None:
                lines.append(f"{name} {key}: {'only in the fold' if g is None else 'only in the server'}")
                continue
            lines += [f"{name} {key} {c}: {w[c]!r} != {g[c]!r}" for c in w if w[c] != g[c]]
    return lines


def assert_server_rebuild_matches(conn: psycopg.Connection[Any]) -> Rows:
    """The server's rebuild of every table gives the Python fold's rows, column by column, and the
    audit finds nothing. Returns the rows."""
    folded = _python_fold(conn)
    replay_live(conn)
    assert _differences(folded, _live(conn)) == []
    position, diffs = diff_live(conn)
    assert position == events.last_position(conn) and diffs == []
    return folded


# ------------------------------------------------------------------ a log of every case, by hand


def _raw(stream: str, type_name: str, **fields: str) -> NewEvent:
    """An event of ``type_name`` whose fields are the JSON texts given, written as they are: JSON the
    encoder never writes (a value of the wrong type; `"a": 1, "a": 2` given as a's text repeats a key)."""
    names = list(fields)
    struct = msgspec.defstruct(
        f"Raw{type_name}",
        [(f"f{i}", msgspec.Raw) for i in range(len(names))],
        rename={f"f{i}": n for i, n in enumerate(names)},
        tag=type_name,
        tag_field="type",
        frozen=True,
        namespace={"type_name": type_name},
    )
    return NewEvent(stream, struct(*(msgspec.Raw(v.encode()) for v in fields.values())))


T0 = datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
PLUS2 = timezone(timedelta(hours=2))


def _link(minutes: int, group: str | None = None) -> TrackingLink:
    return TrackingLink(
        entity="lab",
        project="p",
        url=f"https://wandb/{minutes}",
        source="import",
        created_at=T0 + timedelta(minutes=minutes),
        group=group,
    )


def _varied_log() -> list[NewEvent]:
    e: list[NewEvent] = []

    def add(stream: str, *datas: Any) -> None:
        e.extend(NewEvent(stream, d) for d in datas)

    # artifacts: registered, collected, registered again (no longer removed), collected twice (the later
    # time), collected before it existed (nothing), imported (its own time, with an offset), odd metadata.
    meta = {"b": [1, 2.5, None, True], "a": {"nested": 'é😀\n"q"'}, "big": 2**62, "tiny": 5e-324, "neg0": -0.0}
    add(
        "artifact-a1",
        ArtifactRegistered(artifact_id="a1", hash="h1", kind="ckpt", path="/s/a1", user="alice", size_bytes=10),
    )
    add("gc", ArtifactsCollected(artifact_ids=["a1", "a_later"], actor="alice", reason="old"))
    add(
        "artifact-a1",
        ArtifactRegistered(
            artifact_id="a1", hash="h1b", kind="ckpt", path="/s/a1b", user="bob", producer_run_id="r1", metadata=meta
        ),
    )
    add(
        "artifact-a2",
        ArtifactRegistered(artifact_id="a2", hash="h2", kind="dataset", path="/s/a2", user="alice", size_bytes=2**40),
    )
    add("gc", ArtifactsCollected(artifact_ids=["a2"], actor="alice", reason="1"))
    add("gc", ArtifactsCollected(artifact_ids=["a2", "a2"], actor="alice", reason="2"))
    add(
        "artifact-a_later",
        ArtifactRegistered(artifact_id="a_later", hash="h3", kind="ckpt", path="/s/a3", user="carol"),
    )
    add(
        "artifact-a4",
        ArtifactImported(
            artifact_id="a4",
            hash="h4",
            kind="ckpt",
            path="/o/a4",
            user="dave",
            created_at=datetime(2023, 5, 6, 7, 8, 9, 1, tzinfo=PLUS2),
            integrity="mismatch",
            observed_hash="h4x",
            metadata={"k": "v"},
        ),
        ArtifactImported(
            artifact_id="a4",
            hash="h4",
            kind="ckpt",
            path="/o/a4",
            user="dave",
            created_at=datetime(2023, 5, 6, 7, 8, 9, 999999, tzinfo=UTC),
            integrity="verified",
            alias_segment="seg",
        ),
    )
    add("gc", ArtifactsCollected(artifact_ids=["a4"], actor="x", reason="y"))
    add(
        "artifact-a5",
        ArtifactImported(
            artifact_id="a5", hash="h5", kind="k", path="/o/a5", user="u", created_at=T0, integrity="missing"
        ),
    )
    # aliases: set, set again, removed, removed then set again, imported, removing one never set.
    add(
        "alias-alice/best",
        AliasSet(user="alice", alias="best", artifact_id="a1"),
        AliasSet(user="alice", alias="best", artifact_id="a2"),
    )
    add(
        "alias-alice/gone",
        AliasSet(user="alice", alias="gone", artifact_id="a1"),
        AliasRemoved(user="alice", alias="gone"),
    )
    add(
        "alias-bob/back",
        AliasSet(user="bob", alias="back", artifact_id="a1"),
        AliasRemoved(user="bob", alias="back"),
        AliasSet(user="bob", alias="back", artifact_id="a4"),
    )
    add("alias-bob/never", AliasRemoved(user="bob", alias="never"))
    add("alias-dave/imp", AliasImported(user="dave", alias="imp", artifact_id="a4", set_at=T0, kind="ckpt"))
    add(
        "alias-dave/imp2",
        AliasImported(user="dave", alias="imp2", artifact_id="a4", set_at=T0),
        AliasRemoved(user="dave", alias="imp2"),
    )
    # run outputs: the same (run, artifact) linked again under another role and step; no step.
    add(
        "run-r1",
        OutputLinked(run_id="r1", role="ckpt", artifact_id="a1", path="/r1/ckpt", step=5),
        OutputLinked(run_id="r1", role="final", artifact_id="a1", path="/r1/final"),
        OutputLinked(run_id="r1", role="ckpt", artifact_id="a2", path="/r1/c2", step=2**31 - 1),
    )
    # run inputs: a role listed twice in one submission (the later wins), a run submitted again with other
    # roles (the earlier ones stay), an imported run's inputs.
    inputs = [
        InputRef(role="data", type="artifact", path="/d1", artifact_id="a1", alias="best", hash="hh"),
        InputRef(role="cfg", type="external", path="/cfg"),
        InputRef(role="data", type="artifact", path="/d2", artifact_id="a2"),
    ]
    add("run-r2", _submitted("r2", inputs), _submitted("r2", [InputRef(role="extra", type="external", path="/x")]))
    add("run-r3", _submitted("r3", []))
    add("run-i1", _imported_run("i1", [InputRef(role="data", type="artifact", path="/o/a4", artifact_id="a4")]))
    # pipelines and stages: finished with and without a reason, finished twice, finished before created
    # (nothing), created again after it finished (running again), imported; a stage name listed twice.
    stages = [
        StageSpec(name="prep", run_ids=["r10"]),
        StageSpec(name="train", run_ids=["r11", "r12"], parents=["prep"], sweep_id="s1"),
        StageSpec(name="prep", run_ids=["r13"], parents=[]),
    ]
    add(
        "pipeline-p1",
        PipelineCreated(pipeline_id="p1", name="pp", user="alice", stages=stages, file_path="/p.toml", from_run="r0"),
    )
    add("pipeline-p1", PipelineFinished(pipeline_id="p1", state="failed", reason="stage train failed"))
    add("pipeline-p2", PipelineFinished(pipeline_id="p2", state="succeeded"))
    add(
        "pipeline-p2", PipelineCreated(pipeline_id="p2", name="q", user="bob", stages=[StageSpec(name="a", run_ids=[])])
    )
    add(
        "pipeline-p2",
        PipelineFinished(pipeline_id="p2", state="failed", reason="x"),
        PipelineFinished(pipeline_id="p2", state="succeeded"),
    )
    add(
        "pipeline-p3",
        PipelineCreated(pipeline_id="p3", name="r", user="bob", stages=[StageSpec(name="a", run_ids=["r20"])]),
    )
    add("pipeline-p3", PipelineFinished(pipeline_id="p3", state="cancelled", reason="by bob"))
    add(
        "pipeline-p3",
        PipelineCreated(pipeline_id="p3", name="r2", user="bob", stages=[StageSpec(name="b", run_ids=["r21"])]),
    )
    add(
        "pipeline-p4",
        PipelineImported(
            pipeline_id="p4",
            name="imp",
            user="dave",
            stages=stages[:2],
            status="succeeded",
            created_at=T0,
            finished_at=T0 + timedelta(seconds=1.5),
        ),
        PipelineImported(
            pipeline_id="p5", name="imp", user="dave", stages=[], status="running", created_at=T0, file_path="/f"
        ),
    )
    add("pipeline-p5", PipelineFinished(pipeline_id="p5", state="succeeded"))
    # sweeps: running, finished, finished twice, finished unknown.
    add(
        "sweep-s1",
        SweepCreated(
            sweep_id="s1",
            name="lr",
            user="alice",
            arg="lr",
            start=0,
            end=7,
            run_ids=["r11", "r12"],
            throttle=2,
            aggregate_run_id="r14",
            pipeline_id="p1",
        ),
    )
    add("sweep-s2", SweepCreated(sweep_id="s2", name="wd", user="bob", arg="wd", start=-3, end=3, run_ids=[]))
    add("sweep-s1", SweepFinished(sweep_id="s1", state="failed"), SweepFinished(sweep_id="s1", state="succeeded"))
    add("sweep-s9", SweepFinished(sweep_id="s9", state="succeeded"))
    add("sweep-s3", SweepFinished(sweep_id="s3", state="failed"))  # before it was created: nothing
    add("sweep-s3", SweepCreated(sweep_id="s3", name="bs", user="carol", arg="bs", start=1, end=2, run_ids=["r30"]))
    # evals: requested, recorded twice, recorded before requested (nothing), requested again after it
    # was recorded (no metrics again), imported with and without metrics and run.
    add(
        "eval-e1",
        EvalRequested(
            eval_key="e1", policy="pol", checkpoint_artifact_id="a1", eval_recipe_hash="rh", run_id="re1", step=100
        ),
    )
    add(
        "eval-e1",
        EvalRecorded(eval_key="e1", run_id="re1", metrics={"top1": 0.5}),
        EvalRecorded(eval_key="e1", run_id="re1", metrics={"top1": 0.75, "n": [1, {"x": None}]}),
    )
    add("eval-e2", EvalRecorded(eval_key="e2", run_id="re2", metrics={"a": 1}))
    add(
        "eval-e2",
        EvalRequested(
            eval_key="e2", policy="pol", checkpoint_artifact_id="a2", eval_recipe_hash="rh", run_id="re2", step=None
        ),
    )
    add(
        "eval-e3",
        EvalRequested(
            eval_key="e3", policy="pol", checkpoint_artifact_id="a2", eval_recipe_hash="rh", run_id="re3", step=1
        ),
    )
    add("eval-e3", EvalRecorded(eval_key="e3", run_id="re3", metrics={}))
    add(
        "eval-e3",
        EvalRequested(
            eval_key="e3", policy="pol2", checkpoint_artifact_id="a2", eval_recipe_hash="rh2", run_id="re3b", step=2
        ),
    )
    add(
        "eval-e4",
        _eval_imported("e4", metrics={"loss": 1.25}, run_id="re4"),
        _eval_imported("e5", metrics=None, run_id=None),
    )
    add("eval-e6", _eval_imported("e6", metrics=None, run_id="re6"))  # pending in the original: not recorded
    add("eval-e5", EvalRecorded(eval_key="e5", run_id="re5", metrics={"late": True}))
    # metric files: several batches of one run, with skipped lines, and another run.
    for n, run in ((3, "m1"), (1, "m2")):
        for b in range(n):
            points = [MetricPoint(step=b * 10 + s, values={"loss": 1.0}) for s in range(b + 2)]
            e.append(
                NewEvent(
                    f"metrics-{run}",
                    MetricsLogged(run_id=run, offset=b * 100, end=b * 100 + 99, points=points, skipped=b),
                    b,
                )
            )
    # imports: a run's status changing with and without a tracking link, history in batches (the last
    # batch's highest id is kept), history of no run and empty history, history and status before the
    # run was imported (nothing), a run imported again (history starts over).
    add("run-i2", RunStatusImported(run_id="i2", status="lost"))
    add("run-i2", OriginalEventsImported(run_id="i2", events=[_orig(1)]))
    add("run-i2", _imported_run("i2", [], tracking=_link(1, group="g")))
    add("run-i2", RunStatusImported(run_id="i2", status="running", tracking=_link(2)))
    add("run-i2", RunStatusImported(run_id="i2", status="succeeded", finished_at=T0))
    add("run-i2", OriginalEventsImported(run_id="i2", events=[_orig(9), _orig(4)]))
    add("run-i2", OriginalEventsImported(run_id="i2", events=[_orig(5), _orig(7)]))
    add("run-i2", OriginalEventsImported(run_id="i2", events=[]))
    add("registry", OriginalEventsImported(events=[_orig(3)]))
    add("run-i3", _imported_run("i3", [], tracking=_link(3)))
    add("run-i3", OriginalEventsImported(run_id="i3", events=[_orig(10)]))
    add("run-i3", _imported_run("i3", [], dependency_on={"run": "i2", "n": 1.5}))
    add(
        "run-i4", _imported_run("i4", []), RunStatusImported(run_id="i4", status="failed", tracking=_link(4, group="h"))
    )
    add(
        "user-u1",
        UserImported(name="u1", created_at=T0),
        UserImported(name="u1", created_at=datetime(2020, 1, 1, tzinfo=PLUS2), pg_role="u1_role"),
        UserImported(name="u2", created_at=T0 - timedelta(microseconds=1)),
    )
    # JSON the encoder never writes: a key given twice (the later wins), and events that no longer decode
    # (a field of the wrong type): every handler skips those, so the server must too.
    e += [
        _raw(
            "artifact-dup",
            "ArtifactRegistered",
            artifact_id='"dupA", "artifact_id": "dupB"',
            hash='"h"',
            kind='"k"',
            path='"/p", "path": "/p2"',
            user='"u"',
            metadata='{"k": 1, "k": {"j": [2, 3]}}',
        ),
        _raw("gc", "ArtifactsCollected", artifact_ids='["a1"]', actor="5", reason='"r"'),
        _raw(
            "artifact-a5",
            "ArtifactRegistered",
            artifact_id='"a5"',
            hash='"h"',
            kind='"k"',
            path='"/p"',
            user='"u"',
            size_bytes='"10"',
        ),
        _raw("alias-alice/best", "AliasSet", user='"alice"', alias='"best"', artifact_id="5"),
        _raw("run-r1", "OutputLinked", run_id='"r1"', role='"ckpt"', artifact_id='"a1"', path='"/x"', step="1.5"),
        _raw_submitted("r3", inputs='[{"role": "data", "type": "external", "path": "/p", "hash": 7}]'),
        _raw_submitted("r4", inputs='[{"role": "a", "role": "b", "type": "external", "path": "/p"}]'),
        _raw("pipeline-p3", "PipelineFinished", pipeline_id='"p3"', state='"failed"', reason="5"),
        _raw(
            "pipeline-p6",
            "PipelineCreated",
            pipeline_id='"p6"',
            name='"n"',
            user='"u"',
            stages='[{"name": "a", "run_ids": ["x"], "parents": [1]}]',
        ),
        _raw("sweep-s2", "SweepFinished", sweep_id='"s2"', state="null"),
        _raw("eval-e1", "EvalRecorded", eval_key='"e1"', run_id="7", metrics='{"top1": 0}'),
        _raw("eval-e3", "EvalRecorded", eval_key='"e3"', run_id='"re3b"', metrics='{"m": 1, "m": [true]}'),
        _raw("metrics-m1", "MetricsLogged", run_id='"m1"', offset='"x"', end="1", points="[]"),
        _raw("run-i2", "RunStatusImported", run_id='"i2"', status='"lost"', finished_at='"not a time"'),
        _raw(
            "run-i2",
            "OriginalEventsImported",
            run_id='"i2"',
            events='[{"id": 99, "type": "t", "payload": [], "created_at": "2024-01-01T00:00:00Z"}]',
        ),
        NewEvent("run-i5", _imported_run("i5", [])),
        _raw(
            "run-i5",
            "RunStatusImported",
            run_id='"i5"',
            status='"failed"',
            tracking='{"entity": "e", "project": "p", "url": "u", '
            '"source": "s", "created_at": "2024-01-01T00:00:00.500000Z", "group": null, "unknown": 1}',
        ),
        _raw("user-u2", "UserImported", name='"u2"', created_at='"2024-01-01T00:00Z"'),
        _raw(
            "eval-e4",
            "EvalImported",
            eval_key='"e4"',
            policy='"p"',
            checkpoint_artifact_id='"a"',
            eval_recipe_hash='"h"',
            state='"s"',
            attempts="1.0",
            user='"u"',
            requested_at='"2024-01-01T00:00:00Z"',
            updated_at='"2024-01-01T00:00:00Z"',
        ),
    ]
    return e


def _raw_submitted(run_id: str, inputs: str) -> NewEvent:
    return _raw(
        f"run-{run_id}",
        "RunSubmitted",
        run_id=f'"{run_id}"',
        name='"n"',
        user='"u"',
        executor='"local"',
        run_dir='"/r"',
        recipe="{}",
        inputs=inputs,
    )


def _submitted(run_id: str, inputs: list[InputRef]) -> RunSubmitted:
    return RunSubmitted(
        run_id=run_id,
        name="train",
        user="alice",
        executor="local",
        run_dir=f"/runs/{run_id}",
        recipe={"lr": 0.1},
        inputs=inputs,
    )


def _imported_run(
    run_id: str,
    inputs: list[InputRef],
    tracking: TrackingLink | None = None,
    dependency_on: dict[str, Any] | None = None,
) -> RunImported:
    return RunImported(
        run_id=run_id,
        name="old",
        user="dave",
        status="running",
        executor="slurm",
        run_dir=f"/o/{run_id}",
        recipe={"x": 1},
        recipe_hash=f"rh-{run_id}",
        context={"host": "n1", "argv": ["a", "b"], "f": 0.1},
        repo="/repo",
        source_path=f"/src/{run_id}.toml",
        created_at=T0,
        inputs=inputs,
        tracking=tracking,
        dependency_on=dependency_on,
    )


def _eval_imported(key: str, *, metrics: dict[str, Any] | None, run_id: str | None) -> EvalImported:
    return EvalImported(
        eval_key=key,
        policy="old",
        checkpoint_artifact_id="a4",
        eval_recipe_hash="erh",
        state="done" if metrics else "pending",
        attempts=3,
        user="dave",
        requested_at=T0,
        updated_at=T0 + timedelta(hours=1, microseconds=7),
        run_id=run_id,
        step=9,
        metrics=metrics,
    )


def _orig(i: int) -> OriginalEvent:
    return OriginalEvent(id=i, type="run_started", payload={"i": i}, created_at=T0)


# ------------------------------------------------------------------------------------------ tests


def test_a_rebuild_computes_the_same_rows_as_projecting_each_append(conn: psycopg.Connection[Any]) -> None:
    events.append_batch(conn, _varied_log())
    catch_up(conn)  # the handlers, row by row
    projected = _live(conn)

    folded = assert_server_rebuild_matches(conn)  # the server's queries, against the handlers folded in memory
    assert _differences(folded, projected) == []
    assert all(folded[name] for name in TABLES)  # every table has rows to compare

    # What a user sees, in the rows both agree on.
    artifacts = folded["artifacts"]
    assert artifacts[("a1",)]["removed_at"] is None and artifacts[("a1",)]["user_name"] == "bob"  # registered again
    assert artifacts[("a2",)]["removed_at"] is not None and artifacts[("a_later",)]["removed_at"] is None
    assert artifacts[("a4",)]["removed_at"] is not None and artifacts[("a4",)]["size_bytes"] is None
    assert ("dupA",) not in artifacts and artifacts[("dupB",)]["path"] == "/p2"
    assert artifacts[("dupB",)]["metadata"] == '{"k": {"j": [2, 3]}}'
    assert set(folded["aliases"]) == {("alice", "best"), ("bob", "back"), ("dave", "imp")}
    assert folded["aliases"][("bob", "back")]["artifact_id"] == "a4"
    assert folded["run_outputs"][("r1", "a1")]["role"] == "final"
    assert {k[1]: v["path"] for k, v in folded["run_inputs"].items() if k[0] == "r2"} == {
        "data": "/d2",
        "cfg": "/cfg",
        "extra": "/x",
    }
    assert [k for k in folded["run_inputs"] if k[0] in ("r3", "r4")] == [("r4", "b")]
    pipelines = {k[0]: (v["status"], v["reason"]) for k, v in folded["pipelines"].items()}
    assert pipelines == {
        "p1": ("failed", "stage train failed"),
        "p2": ("succeeded", None),
        "p3": ("running", None),
        "p4": ("succeeded", None),
        "p5": ("succeeded", None),
    }
    assert folded["pipeline_stages"][("p1", "prep")] == {
        "pipeline_id": "p1",
        "stage_name": "prep",
        "ordinal": "2",
        "run_ids": "{r13}",
        "parents": "{}",
    }
    assert {k[0]: v["status"] for k, v in folded["sweeps"].items()} == {
        "s1": "succeeded",
        "s2": "running",
        "s3": "running",
    }
    evals = folded["evals"]
    assert evals[("e1",)]["metrics"] == '{"n": [1, {"x": null}], "top1": 0.75}'
    assert evals[("e2",)]["metrics"] is None and evals[("e2",)]["recorded_at"] is None  # recorded before requested
    assert evals[("e3",)]["policy"] == "pol2" and evals[("e3",)]["metrics"] == '{"m": [true]}'  # the later key
    assert evals[("e6",)]["recorded_at"] is None and evals[("e4",)]["recorded_at"] is not None
    assert evals[("e5",)]["run_id"] == "" and evals[("e5",)]["metrics"] == '{"late": true}'
    assert {k[0]: (v["batches"], v["points"], v["skipped"]) for k, v in folded["metric_files"].items()} == {
        "m1": ("3", "9", "3"),
        "m2": ("1", "2", "0"),
    }
    runs = folded["imported_runs"]
    assert (runs[("i2",)]["original_status"], runs[("i2",)]["original_events"], runs[("i2",)]["last_event_id"]) == (
        "succeeded",
        "4",
        "7",
    )
    assert '"group"' not in runs[("i2",)]["tracking"] and '"group": "h"' in runs[("i4",)]["tracking"]
    assert runs[("i3",)]["original_events"] == "0" and runs[("i3",)]["tracking"] is None
    # As the handler rebuilds the decoded link: no null group, no field it does not know.
    assert json.loads(runs[("i5",)]["tracking"] or "") == {
        "entity": "e",
        "project": "p",
        "url": "u",
        "source": "s",
        "created_at": "2024-01-01T00:00:00.500000Z",
    }
    assert folded["users"][("u1",)]["pg_role"] == "u1_role" and ("u2",) in folded["users"]


def test_the_world_as_of_a_past_position_has_these_tables_as_they_were_then(conn: psycopg.Connection[Any]) -> None:
    log = _varied_log()
    half = len(log) // 2
    events.append_batch(conn, log[:half])
    catch_up(conn)
    then = events.last_position(conn)
    before = _live(conn)
    events.append_batch(conn, log[half:])
    catch_up(conn)

    report = replay_as_of(conn, then)
    assert _differences(before, _live(conn, report.schema)) == []
    assert _differences(before, _live(conn)) != []


def test_the_audit_finds_rows_changed_missing_or_extra_in_these_tables(conn: psycopg.Connection[Any]) -> None:
    events.append_batch(conn, _varied_log())
    catch_up(conn)
    conn.execute("UPDATE live.artifacts SET path = '/tampered', metadata = '{}' WHERE id = 'a1'")
    conn.execute("DELETE FROM live.aliases WHERE user_name = 'alice'")
    conn.execute(
        "INSERT INTO live.evals (eval_key, policy, checkpoint_artifact_id, eval_recipe_hash, run_id, requested_at) "
        "VALUES ('forged', 'p', 'a1', 'h', 'r', now())"
    )
    conn.execute(
        "UPDATE live.pipeline_stages SET run_ids = '{r10,r99}' WHERE pipeline_id = 'p1' AND stage_name = 'train'"
    )
    conn.execute("UPDATE live.imported_runs SET original_events = 5 WHERE run_id = 'i2'")
    conn.commit()

    _, diffs = diff_live(conn, limit=0)
    found = sorted((d.table, d.problem, d.key, sorted(d.columns)) for d in diffs)
    assert found == [
        ("aliases", "missing in live", ["alice", "best"], []),
        ("artifacts", "differs", ["a1"], ["metadata", "path"]),
        ("evals", "not in the log", ["forged"], []),
        ("imported_runs", "differs", ["i2"], ["original_events"]),
        ("pipeline_stages", "differs", ["p1", "train"], ["run_ids"]),
    ]


# ------------------------------------------------------------------------- through labctl itself


def test_the_server_agrees_with_the_handlers_on_what_labctl_records(
    conn: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    """Pipelines, a sweep with a failing point, checkpoints and their evals, aliases set and removed,
    an external dataset, and gc, all through the CLI; the read models projected append by append
    equal the server's rebuild column by column."""
    failed = run_cli(env, "run-sweep", str(DATA / "sweep" / "point_fail.toml"), "--wait")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    run_cli(env, "run-pipeline", str(DATA / "diamond" / "pipeline.toml"), "--wait", check=True)
    trained = run_cli(env, "run", str(DATA / "evals" / "train_alone.toml"), "--wait", check=True).stdout
    train_run = re.search(r"^run_id: (\S+)$", trained, re.M).group(1)  # type: ignore[union-attr]
    run_cli(env, "evald", "once", str(DATA / "evals" / "policies" / "every-step.toml"), check=True)
    run_cli(env, "agent", "--drain", check=True, timeout=120)
    data = tmp_path / "external"
    data.mkdir()
    (data / "x.bin").write_bytes(b"x" * 100)
    run_cli(env, "register-external", "--alias", "ext", "--path", str(data), check=True)
    run_cli(env, "alias", "set", "best", f"evals-alone-{train_run}", check=True)
    run_cli(env, "alias", "set", "best", "ext", check=True)
    run_cli(env, "alias", "rm", "ext", check=True)
    run_cli(env, "gc", "--older-than", "0s", "--force", "--yes", check=True)
    projected = _live(conn)

    folded = assert_server_rebuild_matches(conn)
    assert _differences(folded, projected) == []
    recorded = [v for v in folded["evals"].values() if v["recorded_at"] is not None]
    assert len(recorded) == 3 and all(v["metrics"] for v in recorded)
    assert {v["status"] for v in folded["pipelines"].values()} == {"failed", "succeeded"}
    assert [v["status"] for v in folded["sweeps"].values()] == ["failed"]
    assert ("alice", "best") in folded["aliases"] and ("alice", "ext") not in folded["aliases"]
    assert len(folded["run_inputs"]) > 5 and len(folded["run_outputs"]) > 5


def test_the_server_agrees_with_the_handlers_on_what_gc_collected(
    app: App,  # noqa: F811
    tmp_path: Path,
) -> None:
    world = _gc_world(app, tmp_path)  # outputs stored and linked, an alias, a reader still running, an external
    report = gc.gc(app, older_than=timedelta(0), remove=True, force=True)
    assert [c.artifact_id for c in report.artifacts] == [world["unreferenced"]]
    projected = _live(app.db.conn)

    folded = assert_server_rebuild_matches(app.db.conn)
    assert _differences(folded, projected) == []
    removed = {k[0] for k, v in folded["artifacts"].items() if v["removed_at"] is not None}
    assert removed == {world["unreferenced"]}


def test_the_server_agrees_with_the_handlers_on_an_imported_registry(
    registry: Any,  # noqa: F811
    env: dict[str, str],
    conn: psycopg.Connection[Any],
) -> None:
    """An original registry imported, then imported again after a run ended there (its status and
    history change) and new runs came: users, runs with their history and tracking, artifacts by
    integrity, aliases, pipelines and evals as the importer records them."""
    src, _ = registry("0003")
    run_cli(env, "import", "--from", src, check=True)
    running = _source(src, "SELECT id FROM runs WHERE status = 'running' ORDER BY id")[0][0]
    with psycopg.connect(src, autocommit=True) as c:
        c.execute("UPDATE runs SET status = 'succeeded', finished_at = created_at + 100 WHERE id = %s", (running,))
        c.execute(
            "INSERT INTO events (run_id, event_type, payload_json, created_at) "
            "VALUES (%s, 'run_status', '{\"status\": \"succeeded\"}', 1800000000)",
            (running,),
        )
        _add_runs(c, src)
    run_cli(env, "import", "--from", src, check=True)

    folded = assert_server_rebuild_matches(conn)
    for name in ("imported_runs", "users", "imported_evals", "imported_artifacts", "artifacts", "pipelines"):
        assert folded[name], name
    assert folded["imported_runs"][(running,)]["original_status"] == "succeeded"
    assert (
        int(folded["imported_runs"][(running,)]["original_events"] or 0)
        == (_source(src, f"SELECT count(*) FROM events WHERE run_id = '{running}'")[0][0])
    )
