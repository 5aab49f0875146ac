"""Pipelines: stages load with their recipes, in dependency order; broken graphs are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.files import FileFormatError, load_pipeline

DATA = Path(__file__).parent / "data" / "files"

PRODUCER = 'name = "{name}"\ncommand = "go"\n[outputs.out]\ntype = "dataset"\nalias = "{name}_{{run.id}}"\n'


def consumer(name: str, stage: str, role: str = "out") -> str:
    return PRODUCER.format(name=name) + f'[inputs.in_{stage}]\ntype = "stage"\nstage = "{stage}"\nrole = "{role}"\n'


def write_pipeline(tmp_path: Path, stages: dict[str, str], header: str = 'name = "p"\n') -> Path:
    text = header
    for stage, recipe_text in stages.items():
        (tmp_path / f"{stage}.toml").write_text(recipe_text)
        text += f'[stages.{stage}]\nrecipe = "{stage}.toml"\n'
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return path


def test_example_pipeline_is_ordered_by_dependencies() -> None:
    plan = load_pipeline(DATA / "pipeline" / "pipeline.toml")
    assert plan.name == "pretrain"
    assert plan.from_ == "run_0123456789abcdef"
    assert [s.name for s in plan.stages] == ["prep", "train", "eval"]
    parents = {s.name: s.parents for s in plan.stages}
    assert parents == {"prep": [], "train": ["prep"], "eval": ["train", "prep"]}
    assert plan.stages[0].recipe_path == str((DATA / "pipeline" / "prep.toml").absolute())
    assert plan.stages[1].recipe.name == "train"


def test_independent_stages_keep_declaration_order(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, {"b": PRODUCER.format(name="b"), "a": PRODUCER.format(name="a")})
    assert [s.name for s in load_pipeline(path).stages] == ["b", "a"]


def test_cycle_is_refused_and_named(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path,
        {"a": consumer("a", "c"), "b": consumer("b", "a"), "c": consumer("c", "b"), "d": consumer("d", "a")},
    )
    with pytest.raises(FileFormatError) as caught:
        load_pipeline(path)
    assert caught.value.path == str(path)
    assert caught.value.field == "stages"
    assert "cycle" in caught.value.message
    assert "a -> b -> c -> a" in caught.value.message


def test_stage_depending_on_itself_is_a_cycle(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, {"a": consumer("a", "a")})
    with pytest.raises(FileFormatError, match="a -> a"):
        load_pipeline(path)


def test_unknown_stage_is_refused_in_the_stage_recipe(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, {"a": PRODUCER.format(name="a"), "b": consumer("b", "nope")})
    with pytest.raises(FileFormatError) as caught:
        load_pipeline(path)
    assert caught.value.path == str(tmp_path / "b.toml")
    assert caught.value.field == "inputs.in_nope.stage"
    assert "no stage 'nope'" in caught.value.message


def test_role_the_parent_does_not_output_is_refused(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, {"a": PRODUCER.format(name="a"), "b": consumer("b", "a", role="weights")})
    with pytest.raises(FileFormatError) as caught:
        load_pipeline(path)
    assert caught.value.field == "inputs.in_a.role"
    assert "no output 'weights'" in caught.value.message and "out" in caught.value.message


def test_missing_recipe_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.toml"
    path.write_text('name = "p"\n[stages.a]\nrecipe = "missing.toml"\n')
    with pytest.raises(FileFormatError) as caught:
        load_pipeline(path)
    assert caught.value.path == str(path)
    assert caught.value.field == "stages.a.recipe"
    assert caught.value.line == 3
    assert "not found" in caught.value.message


def test_from_input_without_a_pinned_run_is_refused(tmp_path: Path) -> None:
    recipe = PRODUCER.format(name="a") + '[inputs.base]\ntype = "from"\nrole = "ckpt"\n'
    path = write_pipeline(tmp_path, {"a": recipe})
    with pytest.raises(FileFormatError) as caught:
        load_pipeline(path)
    assert caught.value.path == str(tmp_path / "a.toml")
    assert caught.value.field == "inputs.base"
    assert "from =" in caught.value.message


def test_duplicate_stage_names_are_a_clean_error(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(PRODUCER.format(name="a"))
    path = tmp_path / "pipeline.toml"
    path.write_text('name = "p"\n[stages.a]\nrecipe = "a.toml"\n[stages.a]\nrecipe = "a.toml"\n')
    with pytest.raises(FileFormatError) as caught:
        load_pipeline(path)
    assert caught.value.line == 4
    assert "invalid TOML" in caught.value.message and "twice" in caught.value.message


def test_errors_in_a_stage_recipe_name_the_recipe_file(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, {"a": 'name = "a"\ncommand = "go"\n[resources]\ngpus = "x"\n'})
    with pytest.raises(FileFormatError) as caught:
        load_pipeline(path)
    assert caught.value.path == str(tmp_path / "a.toml")
    assert caught.value.field == "resources.gpus"


def test_unknown_pipeline_key_is_refused(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, {"a": PRODUCER.format(name="a")}, header='name = "p"\nparallel = true\n')
    with pytest.raises(FileFormatError) as caught:
        load_pipeline(path)
    assert caught.value.field == "parallel"
