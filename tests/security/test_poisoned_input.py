"""Issue 13 item 5: no input can poison the log; readers get past whatever is already in it.

Each bad value is refused with one line and exit 2, appends nothing and
leaves no run directory behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

import events
import projections
from events import NewEvent
from events.types import RunSubmitted
from labctl.eventlog import event_json
from labctl.web.api import EventsQuery, events_page, run_detail
from labctl.web.app import json_response
from tests.conftest import run_cli

RECIPE = """
name = "poison"
command = "echo {params.x}"
[params]
x = 1
"""

DEEP = "[" * 3000 + "]" * 3000


def _event_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM events").fetchone()
    return int(row[0]) if row else 0


def _refused(proc: Any, conn: psycopg.Connection[Any], home: Path) -> str:
    """The command failed the way a user mistake must: exit 2, one line, nothing written."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("labctl: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert _event_count(conn) == 0
    runs = home / "runs"
    assert not runs.exists() or not any(runs.rglob(".lab")), "an orphan run dir was left behind"
    return lines[0]


@pytest.mark.parametrize(
    ("assignment", "why"),
    [
        ("params.x=99999999999999999999", "does not fit in 64 bits"),
        ("params.x=-99999999999999999999", "does not fit in 64 bits"),
        ("params.x=nan", "not a finite number"),
        ("params.x=inf", "not a finite number"),
        ('params.x="a\\u0000b"', "NUL"),
        (f"params.x={DEEP}", "nested too deeply"),
        ("env.1BAD=1", "not a valid environment variable name"),
        ("args.n=a\udcffb", "not valid UTF-8"),  # the byte 0xff on the command line
    ],
)
def test_a_poisoned_set_value_is_refused_and_appends_nothing(
    env: dict[str, str], conn: psycopg.Connection[Any], home: Path, tmp_path: Path, assignment: str, why: str
) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    line = _refused(run_cli(env, "run", str(recipe), "--set", assignment), conn, home)
    assert why in line


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ('name = "big"\ncommand = "true"\n[params]\nx = "' + "a" * (10 * 1024 * 1024) + '"\n', "characters long"),
        ('name = "deep"\ncommand = "true"\n[params]\nx = ' + DEEP + "\n", "nested too deeply"),
        ('name = "wide"\ncommand = "true"\n[params]\nx = 1e999\n', "not a finite number"),
        ('name = "nul"\ncommand = "true"\n[env]\nX = "a\\u0000"\n', "NUL"),
    ],
)
def test_a_poisoned_recipe_file_is_refused_and_appends_nothing(
    env: dict[str, str], conn: psycopg.Connection[Any], home: Path, tmp_path: Path, body: str, why: str
) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(body)
    assert why in _refused(run_cli(env, "run", str(recipe)), conn, home)


def test_a_sweep_of_a_hundred_million_points_is_refused_before_anything_is_planned(
    env: dict[str, str], conn: psycopg.Connection[Any], home: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "sweep.toml"
    recipe.write_text('name = "s"\ncommand = "true"\n[args]\ni = "0"\n[sweep]\narg = "i"\nstart = 0\nend = 99999999\n')
    line = _refused(run_cli(env, "run-sweep", str(recipe), timeout=60), conn, home)
    assert "100,000,000 points" in line


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--as-of", "garbage"],
        ["status", "--as-of", "99999999999999999999"],
        ["status", "--as-of", "0001-01-01"],
        ["replay", "--until", "99999999999999999999"],
        ["replay", "--until", "-5"],
        ["gc", "--older-than", "99999999999999999999d"],
        ["events", "--limit", "-1"],
        ["events", "--limit", "99999999999999999999"],
        ["events", "--after", "-1"],
        ["events", "--after", "99999999999999999999"],
    ],
)
def test_a_bad_option_value_is_one_line_and_exit_2(
    env: dict[str, str], conn: psycopg.Connection[Any], home: Path, args: list[str]
) -> None:
    _refused(run_cli(env, *args), conn, home)


@pytest.mark.parametrize(
    "url", ["garbage", "postgres://u:hunter2@[::1/x", "postgresql://u:hunter2@localhost:5432/db?port=x"]
)
def test_a_malformed_database_url_is_one_line_and_exit_2_without_its_password(env: dict[str, str], url: str) -> None:
    proc = run_cli({**env, "LABCTL_DATABASE_URL": url}, "status")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "malformed database URL" in proc.stderr
    assert "hunter2" not in proc.stderr


def test_readers_get_past_an_integer_wider_than_64_bits_already_in_the_log(
    env: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    # What an older labctl let through: the value is now in an immutable event.
    poisoned = RunSubmitted(
        run_id="run_poisoned",
        name="poison",
        user="alice",
        executor="local",
        run_dir="/nonexistent/run_poisoned",
        recipe={"name": "poison", "command": ["true"], "params": {"x": 10**20}},
        cache_key="k",
    )
    projections.record(conn, [NewEvent("run-run_poisoned", poisoned, 0)])

    listed = run_cli(env, "events", "--json", check=True)
    assert "100000000000000000000" in listed.stdout
    shown = run_cli(env, "show", "run_poisoned", check=True)
    assert '"x": 100000000000000000000' in shown.stdout
    # the web page's /api/events and /api/runs/<id> build their bodies the same way
    assert b"100000000000000000000" in b"".join(event_json(e) for e in events_page(conn, EventsQuery()))
    assert b"100000000000000000000" in json_response(run_detail(conn, "run_poisoned")).body


class _Forged(msgspec.Struct, frozen=True, tag="RunFinished", tag_field="type"):
    """A RunFinished whose exit_code is not an integer, as a buggy or older writer might have left."""

    run_id: str
    state: str
    exit_code: str

    @property
    def type_name(self) -> str:
        return "RunFinished"


def test_an_event_that_no_longer_fits_its_type_is_shown_raw_and_does_not_stop_replay(
    env: dict[str, str], conn: psycopg.Connection[Any]
) -> None:
    events.append_batch(conn, [NewEvent("run-run_forged", _Forged(run_id="run_forged", state="x", exit_code="?"), 0)])  # type: ignore[arg-type]
    listed = run_cli(env, "events", "--json", check=True)
    assert '"exit_code":"?"' in listed.stdout
    assert "rebuilt 1 events" in run_cli(env, "replay", check=True).stdout
