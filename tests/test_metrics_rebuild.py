"""A rebuild computes the metrics table in the server (projections/queries.sql) while appends project
it in Python (projections/metrics.py): both must give the same rows, and the audit must compare them."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import psycopg

import events
from events import NewEvent
from events.types import MetricPoint, MetricsLogged
from projections.engine import catch_up, diff_live, replay_as_of, replay_live


class _RawMetricsLogged(msgspec.Struct, frozen=True, tag="MetricsLogged", tag_field="type"):
    """A MetricsLogged whose points are written as given: JSON our own encoder never produces."""

    run_id: str
    offset: int
    end: int
    points: msgspec.Raw

    @property
    def type_name(self) -> str:
        return "MetricsLogged"


def _raw(run_id: str, points: str) -> NewEvent:
    return NewEvent(f"metrics-{run_id}", _RawMetricsLogged(run_id, 0, 1, msgspec.Raw(points.encode())))  # type: ignore[arg-type]


def _logged(run_id: str, points: list[MetricPoint]) -> NewEvent:
    return NewEvent(f"metrics-{run_id}", MetricsLogged(run_id=run_id, offset=0, end=1, points=points))


def _metric_rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    rows = conn.execute("SELECT run_id, name, step, value, logged_at FROM live.metrics ORDER BY 1, 2, 3").fetchall()
    # repr keeps what == would hide: -0.0 against 0.0
    return [(r, n, s, repr(v), t) for r, n, s, v, t in rows]


def _varied_log() -> list[NewEvent]:
    rng = random.Random(7)
    batch: list[NewEvent] = []
    for run in range(6):
        rid = f"run_m{run}"
        for _ in range(4):  # later batches log some steps again: the last write of a point wins
            points = []
            for _ in range(60):
                at = rng.choice([None, rng.uniform(0, 2e9), float(rng.randrange(2_000_000_000)) + 0.5e-6, -1.5])
                raw = rng.choice(
                    [rng.uniform(-1e6, 1e6), float(rng.randrange(10**6)), "nan", "inf", "-inf", "x", 1e308]
                )
                points.append(MetricPoint(step=rng.randrange(40), values={rng.choice("abc"): raw}, at=at))
            batch.append(_logged(rid, points))
    batch += [
        _raw("run_dup_key", '[{"step": 1, "values": {"loss": 1, "loss": 2}}]'),
        _raw("run_dup_step", '[{"step": 1, "step": 2, "values": {"loss": 3}}]'),
        _raw("run_tiny", '[{"step": 1, "values": {"a": 1e-400, "b": -1e-400, "c": 4.9e-324}, "at": 1e-400}]'),
        _raw("run_undecodable", '[{"step": 1.5, "values": {"loss": 1}}]'),
        _raw("run_bool", '[{"step": 1, "values": {"loss": true}}]'),
    ]
    return batch


def test_a_rebuild_computes_the_same_metric_points_as_projecting_each_append(conn: psycopg.Connection[Any]) -> None:
    events.append_batch(conn, _varied_log())
    catch_up(conn)  # the handler, row by row
    projected = _metric_rows(conn)

    assert diff_live(conn) == (events.last_position(conn), [])
    replay_live(conn)  # the server's query
    assert _metric_rows(conn) == projected

    by_key = {(r, n, s): v for r, n, s, v, _ in projected}
    assert by_key[("run_dup_key", "loss", 1)] == "2.0"  # the later of two equal keys, as the decoder keeps it
    assert ("run_dup_step", "loss", 2) in by_key
    assert [by_key[("run_tiny", n, 1)] for n in "abc"] == ["0.0", "-0.0", "5e-324"]
    assert not any(r in ("run_undecodable", "run_bool") for r, *_ in projected)  # skipped by both
    assert {"'inf'", "'-inf'"} & set(by_key.values()) == set()  # infinities are floats, not text
    assert {"inf", "-inf", "None"} <= set(by_key.values())
    assert len(projected) > 500


def test_the_audit_finds_metric_points_changed_behind_the_logs_back(conn: psycopg.Connection[Any]) -> None:
    events.append_batch(
        conn, [_logged("run_a", [MetricPoint(step=s, values={"loss": 1.0 / (s + 1)}) for s in range(5)])]
    )
    catch_up(conn)
    conn.execute("UPDATE live.metrics SET value = 0.25 WHERE step = 1")
    conn.execute("DELETE FROM live.metrics WHERE step = 2")
    conn.execute("INSERT INTO live.metrics VALUES ('run_a', 'loss', 99, 1.0, now())")
    conn.commit()

    _, diffs = diff_live(conn)
    found = sorted((d.problem, d.key[2], d.columns) for d in diffs if d.table == "metrics")
    assert found == [
        ("differs", 1, {"value": [0.25, 0.5]}),
        ("missing in live", 2, {}),
        ("not in the log", 99, {}),
    ]


def test_the_world_as_of_a_past_position_has_the_metric_points_logged_by_then(conn: psycopg.Connection[Any]) -> None:
    first = [_logged("run_a", [MetricPoint(step=s, values={"loss": 1.0}) for s in range(3)])]
    events.append_batch(conn, first)
    catch_up(conn)
    then = events.last_position(conn)
    before = _metric_rows(conn)
    # Later, step 1 is logged again with another value and step 3 is new.
    later = [_logged("run_a", [MetricPoint(step=s, values={"loss": 0.5}) for s in (1, 3)])]
    events.append_batch(conn, later)
    catch_up(conn)

    report = replay_as_of(conn, then)
    query = f"SELECT run_id, name, step, value, logged_at FROM {report.schema}.metrics ORDER BY 1, 2, 3"
    assert [(r, n, s, repr(v), t) for r, n, s, v, t in conn.execute(query)] == before
    assert [(s, v) for _, _, s, v, _ in _metric_rows(conn)] == [(0, "1.0"), (1, "0.5"), (2, "1.0"), (3, "0.5")]
