"""Eval policies load with their eval recipe; a policies directory loads in file-name order."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.files import FileFormatError, load_policies, load_policy, policy_recipe

DATA = Path(__file__).parent / "data" / "files"


def test_example_policy_loads_with_its_recipe() -> None:
    policy = load_policy(DATA / "policies" / "ppl.toml")
    assert policy.name == "ppl-every-1000"
    assert policy.applies_to.type == "checkpoint"
    assert policy.applies_to.producer_recipe == "train"
    assert policy.cadence.every_n_steps == 1000
    assert policy.recipe == str((DATA / "recipes" / "eval.toml").absolute())
    assert policy_recipe(policy).name == "eval-ppl"


def test_cadence_defaults_to_every_step(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(
        f'name = "p"\nrecipe = "{DATA / "recipes" / "eval.toml"}"\n[applies_to]\ntype = "checkpoint"\n'
    )
    assert load_policy(tmp_path / "p.toml").cadence.every_n_steps == 1


def test_policy_whose_recipe_takes_no_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "r.toml").write_text('name = "r"\ncommand = "go"\n')
    (tmp_path / "p.toml").write_text('name = "p"\nrecipe = "r.toml"\n[applies_to]\ntype = "checkpoint"\n')
    with pytest.raises(FileFormatError) as caught:
        load_policy(tmp_path / "p.toml")
    assert caught.value.path == str(tmp_path / "r.toml")
    assert 'type = "checkpoint"' in caught.value.message


def test_policy_with_missing_recipe_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text('name = "p"\nrecipe = "nope.toml"\n[applies_to]\ntype = "checkpoint"\n')
    with pytest.raises(FileFormatError) as caught:
        load_policy(tmp_path / "p.toml")
    assert (caught.value.field, caught.value.line) == ("recipe", 2)


def test_policies_dir_loads_sorted_and_refuses_duplicate_names(tmp_path: Path) -> None:
    eval_recipe = DATA / "recipes" / "eval.toml"
    for file_name, name in (("b.toml", "second"), ("a.toml", "first")):
        (tmp_path / file_name).write_text(
            f'name = "{name}"\nrecipe = "{eval_recipe}"\n[applies_to]\ntype = "checkpoint"\n'
        )
    assert [p.name for p in load_policies(tmp_path)] == ["first", "second"]
    (tmp_path / "c.toml").write_text((tmp_path / "a.toml").read_text())
    with pytest.raises(FileFormatError, match="also defined in"):
        load_policies(tmp_path)
