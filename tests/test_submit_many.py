"""Submitting several runs together (``submit_many``, how the advancer submits a page's ready runs):
each run is recorded exactly as ``submit`` records it alone, all in one transaction or none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from events import ConcurrencyError
from events.types import RunSubmitted
from tests.test_agent_batches import app_for

RECIPE = """\
name = "tiny"
command = ["bash", "-c", 'mkdir -p "$1" && echo "$2" > "$1/v" && touch "$1/DONE"', "x",
           "{outputs.out.path}", "{params.i}"]

[params]
i = 0

[outputs.out]
type = "dataset"
marker = "DONE"
alias = "tiny-{run.id}"
"""


def requests_for(app: Any, path: Path, values: list[int]) -> list[Any]:
    from labctl.files import load_recipe
    from labctl.submit import Request, apply_overrides

    recipe = load_recipe(path)
    return [
        Request(recipe=apply_overrides(recipe, [f"params.i={i}"]), recipe_path=str(path), user=app.user) for i in values
    ]


def stream_types(conn: psycopg.Connection[Any], stream: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT type FROM events WHERE stream = %s ORDER BY version", (stream,))]


def submitted_of(conn: psycopg.Connection[Any], run_id: str) -> RunSubmitted:
    row = conn.execute(
        "SELECT data::text FROM events WHERE stream = %s AND type = 'RunSubmitted'", (f"run-{run_id}",)
    ).fetchone()
    assert row is not None, f"{run_id} was not submitted"
    return msgspec.json.decode(row[0], type=RunSubmitted)


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(RECIPE)
    return path


def test_runs_submitted_together_are_recorded_as_each_alone_would_be(
    conn: psycopg.Connection[Any], env: dict[str, str], recipe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import projections
    from labctl.submit import prepare, submit, submit_many, submitted_event

    app = app_for(env, monkeypatch)
    appends = []
    record = projections.record

    def counted(on: psycopg.Connection[Any], batch: Any, **kwargs: Any) -> Any:
        appends.append(len(batch))
        return record(on, batch, **kwargs)

    try:
        with monkeypatch.context() as patch:
            patch.setattr(projections, "record", counted)
            together = submit_many(app, requests_for(app, recipe, [1, 2, 3, 4]))
        assert appends == [8]  # one append: four submissions and four cache claims
        alone = [submit(app, r.recipe, r.recipe_path) for r in requests_for(app, recipe, [5])]
        for result in [*together, *alone]:
            assert not isinstance(result, Exception), result
            assert result.status == "submitted"
            # the same events as a run submitted alone: its submission, then its cache key claimed for it
            assert stream_types(conn, f"run-{result.run_id}") == ["RunSubmitted"]
            assert stream_types(conn, f"cache-{result.cache_key}") == ["CacheClaimed"]
            assert (Path(result.run_dir) / ".lab" / "context.json").is_file()
        for result, req in zip(together, requests_for(app, recipe, [1, 2, 3, 4]), strict=True):
            assert not isinstance(result, Exception)
            # what was recorded is what submit would record for this run: recipe, cache key and its parts
            again = prepare(app, req.recipe, req.recipe_path, run_id=result.run_id)
            assert submitted_of(conn, result.run_id) == submitted_event(again, no_cache=False)
        assert len({r.cache_key for r in together if not isinstance(r, Exception)}) == 4
    finally:
        app.close()


def test_two_runs_of_one_cache_key_in_a_batch_coalesce_as_one_after_the_other_would(
    conn: psycopg.Connection[Any], env: dict[str, str], recipe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labctl.submit import submit_many

    app = app_for(env, monkeypatch)
    try:
        first, second, other = submit_many(app, requests_for(app, recipe, [7, 7, 8]))
    finally:
        app.close()
    assert not isinstance(first, Exception) and not isinstance(second, Exception) and not isinstance(other, Exception)
    assert (first.status, second.status, other.status) == ("submitted", "awaiting_peer", "submitted")
    assert second.producer_run_id == first.run_id
    assert stream_types(conn, f"cache-{first.cache_key}") == ["CacheClaimed", "CacheJoined"]
    assert stream_types(conn, f"run-{second.run_id}") == ["RunSubmitted", "RunCoalesced"]


def test_a_batch_holding_a_run_submitted_meanwhile_records_the_others_once(
    conn: psycopg.Connection[Any], env: dict[str, str], recipe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipeline stage's run already submitted by another agent: the batch loses the race, then each run
    is recorded on its own; the stale one gets ConcurrencyError and nothing is recorded twice."""
    import dataclasses

    from labctl.ids import new_run_id
    from labctl.submit import submit, submit_many

    app = app_for(env, monkeypatch)
    try:
        reqs = [dataclasses.replace(r, run_id=new_run_id()) for r in requests_for(app, recipe, [11, 12, 13])]
        taken = reqs[1]
        submit(app, taken.recipe, taken.recipe_path, run_id=taken.run_id)  # the other agent, first
        results = submit_many(app, reqs)
    finally:
        app.close()
    assert isinstance(results[1], ConcurrencyError)
    for req, result in zip(reqs, results, strict=True):
        assert stream_types(conn, f"run-{req.run_id}") == ["RunSubmitted"]
        if not isinstance(result, Exception):
            assert stream_types(conn, f"cache-{result.cache_key}") == ["CacheClaimed"]


def test_a_batch_that_fails_before_its_commit_records_none_of_its_runs(
    conn: psycopg.Connection[Any], env: dict[str, str], recipe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import projections
    from labctl.ids import new_run_id
    from labctl.submit import submit_many

    record = projections.record

    def record_then_crash(on: psycopg.Connection[Any], batch: Any, **kwargs: Any) -> Any:
        record(on, batch, **kwargs)  # appended and projected, not committed
        raise RuntimeError("the submitter died")

    app = app_for(env, monkeypatch)
    reqs = [dataclasses.replace(r, run_id=new_run_id()) for r in requests_for(app, recipe, [21, 22, 23])]
    before = conn.execute("SELECT count(*) FROM events").fetchone()
    try:
        with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="the submitter died"):
            patch.setattr(projections, "record", record_then_crash)
            submit_many(app, reqs)
    finally:
        app.close()
    assert conn.execute("SELECT count(*) FROM events").fetchone() == before
    got = conn.execute("SELECT count(*) FROM runs WHERE id = ANY(%s)", ([r.run_id for r in reqs],)).fetchone()
    assert got == (0,)
