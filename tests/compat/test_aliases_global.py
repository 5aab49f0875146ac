"""Aliases are one namespace shared by the whole team, as the original's ``artifact_aliases``.

An ``artifact = "<alias>"`` input resolves a teammate's alias; the
``aliases/<user>/<alias>`` symlinks stay a per-user overlay for browsing.
The original looks a reference up as an artifact id first, then as an alias.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg

from tests.compat.lab import Lab

USES_PRETRAINED = """\
name = "use_pretrained"
repo = "myrepo"
command = ["bash", "-c", "cat {inputs.model.path}/weights.txt > {outputs.copy.path}/copy.txt"]

[inputs.model]
type     = "artifact"
artifact = "qwen3vl2b_pretrained"

[outputs.copy]
type   = "dataset"
marker = "copy.txt"
alias  = "copy_{run.id}"
"""


def _pretrained(lab: Lab, text: str, name: str = "pretrained") -> Path:
    folder = lab.root / "data" / name
    folder.mkdir(parents=True)
    (folder / "weights.txt").write_text(text)
    return folder


def _register(lab: Lab, folder: Path, user: str) -> None:
    lab.cli("register-external", "--alias", "qwen3vl2b_pretrained", "--path", str(folder), "--kind", "model", user=user)


def _copied(lab: Lab, conn: psycopg.Connection[Any], run_id: str) -> str:
    row = conn.execute("SELECT path FROM run_outputs WHERE run_id = %s AND role = 'copy'", (run_id,)).fetchone()
    assert row is not None, f"{run_id} registered no copy"
    return (Path(row[0]) / "copy.txt").read_text()


def test_an_input_resolves_an_alias_a_teammate_registered(lab: Lab, conn: psycopg.Connection[Any]) -> None:
    folder = _pretrained(lab, "qwen weights\n")
    _register(lab, folder, "carol")
    recipe = lab.recipe("use.toml", USES_PRETRAINED)

    shown = lab.run(recipe, user="bob")

    assert _copied(lab, conn, shown["run_id"]) == "qwen weights\n"
    row = conn.execute("SELECT alias, path FROM run_inputs WHERE run_id = %s", (shown["run_id"],)).fetchone()
    assert row == ("qwen3vl2b_pretrained", str(folder))
    # the overlay stays per user: carol's link, none for bob
    links = lab.root / "shared" / "artifacts" / "model" / "aliases"
    assert os.path.islink(links / "carol" / "qwen3vl2b_pretrained")
    assert not os.path.lexists(links / "bob" / "qwen3vl2b_pretrained")


def test_the_alias_set_last_wins_whoever_set_it(lab: Lab, conn: psycopg.Connection[Any]) -> None:
    """One namespace: setting an alias re-points it for everyone, as the original's upsert does."""
    old = _pretrained(lab, "carol's\n", "old")
    new = _pretrained(lab, "bob's\n", "new")
    _register(lab, old, "carol")
    _register(lab, new, "bob")
    recipe = lab.recipe("use.toml", USES_PRETRAINED)

    assert _copied(lab, conn, lab.run(recipe, user="alice")["run_id"]) == "bob's\n"
    assert _copied(lab, conn, lab.run(recipe, "--no-cache", user="carol")["run_id"]) == "bob's\n"

    # `owner/name` still picks one user's alias
    by_owner = USES_PRETRAINED.replace('"qwen3vl2b_pretrained"', '"carol/qwen3vl2b_pretrained"')
    pinned = lab.recipe("pinned.toml", by_owner)
    assert _copied(lab, conn, lab.run(pinned, user="alice")["run_id"]) == "carol's\n"


def test_an_artifact_id_is_looked_up_before_an_alias(lab: Lab, conn: psycopg.Connection[Any]) -> None:
    folder = _pretrained(lab, "by id\n")
    shown = lab.cli("register-external", "--alias", "anything", "--path", str(folder), "--kind", "model").stdout
    artifact_id = shown.split()[1]
    assert artifact_id.startswith("artifact_")
    recipe = lab.recipe("use.toml", USES_PRETRAINED.replace('"qwen3vl2b_pretrained"', f'"{artifact_id}"'))

    assert _copied(lab, conn, lab.run(recipe, user="bob")["run_id"]) == "by id\n"


def test_an_unknown_alias_is_one_line_and_nothing_is_recorded(lab: Lab, conn: psycopg.Connection[Any]) -> None:
    recipe = lab.recipe("use.toml", USES_PRETRAINED)
    before = conn.execute("SELECT count(*) FROM events").fetchone()

    proc = lab.cli("run", str(recipe), user="bob", check=False)

    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"labctl: error: {recipe}: inputs.model.artifact: no artifact with id or alias 'qwen3vl2b_pretrained'"
    ]
    assert conn.execute("SELECT count(*) FROM events").fetchone() == before
