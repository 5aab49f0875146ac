"""Recipes: the documented shapes load; every user mistake names the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.files import (
    ArtifactInput,
    ExternalInput,
    FileFormatError,
    Recipe,
    canonical_recipe_bytes,
    load_recipe,
    parse_mem_mb,
    parse_time_seconds,
    recipe_hash,
)

DATA = Path(__file__).parent / "data" / "files"


def write(tmp_path: Path, text: str, name: str = "recipe.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_full_example_recipe_loads_with_every_section() -> None:
    recipe = load_recipe(DATA / "recipes" / "train.toml")
    assert recipe.name == "train"
    assert recipe.repo == "nanogpt"
    assert recipe.command[-1] == '--cfg={"warmup": 100}'
    assert recipe.params["optim"] == {"lr": 3e-4, "betas": [0.9, 0.95]}
    assert recipe.args == {
        "lr": "0.0003",
        "steps": "9000",
        "compile": "true",
        "run_name": "{params.model}-{run.id}",
    }
    assert recipe.resources.gpus == 4 and recipe.resources.exclude_nodes == ["node07", "node08"]
    assert [c.mem for c in recipe.resources.components] == ["64GB", "512MB"]
    assert recipe.inputs["data"] == ArtifactInput(artifact="openwebtext")
    assert recipe.inputs["tokenizer"] == ExternalInput(path="/datasets/tokenizers/gpt2")
    assert recipe.outputs["ckpt"].alias == "train_{run.id}"
    assert recipe.tracking is not None and recipe.tracking.wandb is not None
    assert recipe.tracking.wandb.group == "{params.model}"
    assert recipe.sweep is not None and (recipe.sweep.start, recipe.sweep.end) == (0, 9)
    assert recipe.sweep.aggregate == str((DATA / "recipes" / "aggregate.toml").absolute())


def test_minimal_recipe_gets_documented_resource_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, 'name = "x"\ncommand = ["true"]\n'))
    res = recipe.resources
    assert (res.gpus, res.cpus, res.mem, res.time) == (0, 1, "4GB", "00:10:00")
    assert recipe.inputs == {} and recipe.outputs == {} and recipe.tracking is None


def test_single_string_command_runs_with_bash(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, 'name = "x"\ncommand = "echo hi && ls"\n'))
    assert recipe.command == ["bash", "-c", "echo hi && ls"]


def test_string_exclude_nodes_is_one_entry(tmp_path: Path) -> None:
    text = 'name = "x"\ncommand = "true"\n[resources]\nexclude_nodes = "n1,n2"\n'
    assert load_recipe(write(tmp_path, text)).resources.exclude_nodes == ["n1,n2"]


BASE = 'name = "train"\ncommand = ["python", "t.py"]\n'
OUT = '[outputs.ckpt]\ntype = "dataset"\nalias = "a_{run.id}"\n'

BAD_RECIPES = [
    pytest.param(BASE + "colour = 1\n", "colour", "unknown field", id="unknown-top-level-field"),
    pytest.param(BASE + OUT + "maker = 'x'\n", "outputs.ckpt.maker", "expected one of", id="unknown-nested-field"),
    pytest.param('command = ["x"]\n', "name", "required field is missing", id="missing-name"),
    pytest.param(BASE + '[resources]\ncpus = "four"\n', "resources.cpus", "expected `int`", id="cpus-wrong-type"),
    pytest.param(BASE + '[resources]\nmem = "lots"\n', "resources.mem", "bad memory size", id="bad-mem"),
    pytest.param(BASE + '[resources]\ntime = "4 hours"\n', "resources.time", "bad time limit", id="bad-time"),
    pytest.param(BASE + '[resources]\ntime = "01:75:00"\n', "resources.time", "bad time limit", id="bad-minutes"),
    pytest.param(
        BASE + '[[resources.components]]\nmem = "1XB"\n',
        "resources.components[0].mem",
        "bad memory size",
        id="bad-component-mem",
    ),
    pytest.param(
        BASE + '[inputs.data]\ntype = "stage"\nstage = "prep"\nrole = "data"\n',
        "inputs.data.type",
        "only allowed in recipes run as pipeline stages",
        id="stage-input-outside-pipeline",
    ),
    pytest.param(
        BASE + '[inputs.ckpt]\ntype = "checkpoint"\n',
        "inputs.ckpt.type",
        "eval policy",
        id="checkpoint-input-outside-policy",
    ),
    pytest.param(
        BASE + '[inputs.data]\ntype = "s3"\n',
        "inputs.data.type",
        "expected one of: artifact, external, stage, from, checkpoint",
        id="unknown-input-type",
    ),
    pytest.param(
        BASE + '[inputs.data]\ntype = "external"\npath = "rel/path"\n',
        "inputs.data.path",
        "not absolute",
        id="relative-external-path",
    ),
    pytest.param(
        BASE + '[outputs.ckpt]\ntype = "dataset"\n',
        "outputs.ckpt.alias",
        "required",
        id="output-without-alias",
    ),
    pytest.param('name = "my run"\ncommand = "x"\n', "name", "not a valid name", id="invalid-name"),
    pytest.param(BASE + "[sweep]\narg = 'seed'\nstart = 5\nend = 2\n", "sweep", "after end", id="sweep-backwards"),
    pytest.param(
        BASE + '[args]\nout = "{outputs.nope.path}"\n',
        "args.out",
        "no output role 'nope'",
        id="token-for-unknown-output",
    ),
    pytest.param(BASE + '[env]\nLR = "{params.lr}"\n', "env.LR", "no [params] key 'lr'", id="token-for-unknown-param"),
    pytest.param(
        BASE + '[outputs.o]\ntype = "dataset"\nalias = "{outputs.o.path}"\n',
        "outputs.o.alias",
        "cannot use output paths",
        id="alias-uses-output-path",
    ),
    pytest.param(BASE + "[args]\nx = [1, 2]\n", "args.x", "expected `str`", id="arg-not-scalar"),
    pytest.param(BASE + '[args]\na = "{args.b}"\nb = "{args.a}"\n', "args.a", "in a cycle", id="args-cycle"),
    pytest.param('name = "x"\ncommand = [\n', "", "invalid TOML", id="toml-syntax-error"),
]


@pytest.mark.parametrize(("text", "field", "message"), BAD_RECIPES)
def test_bad_recipe_error_names_file_and_field(tmp_path: Path, text: str, field: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(FileFormatError) as caught:
        load_recipe(path)
    error = caught.value
    assert error.path == str(path)
    assert error.field == field
    assert message in error.message
    assert str(error).startswith(str(path))
    assert "\n" not in str(error)


def test_syntax_error_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x"\ncommand = "y"\nmem = = 3\n')
    with pytest.raises(FileFormatError) as caught:
        load_recipe(path)
    assert caught.value.line == 3
    assert str(caught.value).startswith(f"{path}:3: invalid TOML")


def test_validation_error_reports_the_line_of_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + '\n[resources]\ngpus = 1\ncpus = "four"\n')
    with pytest.raises(FileFormatError) as caught:
        load_recipe(path)
    assert caught.value.line == 6
    assert str(caught.value) == f"{path}:6: resources.cpus: expected `int`, got `str`"


def test_missing_recipe_file_is_a_file_format_error(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match="file not found"):
        load_recipe(tmp_path / "nope.toml")


def test_pipeline_and_policy_flags_allow_their_inputs(tmp_path: Path) -> None:
    stage = write(tmp_path, BASE + '[inputs.d]\ntype = "stage"\nstage = "a"\nrole = "r"\n', "s.toml")
    assert load_recipe(stage, pipeline=True).inputs["d"].__class__.__name__ == "StageInput"
    ckpt = write(tmp_path, BASE + '[inputs.c]\ntype = "checkpoint"\n', "c.toml")
    assert "c" in load_recipe(ckpt, eval_policy=True).inputs


@pytest.mark.parametrize(
    ("text", "megabytes"),
    [("32GB", 32768), ("512MB", 512), ("4G", 4096), ("1TB", 1048576), ("2048", 2048), ("1.5g", 1536)],
)
def test_memory_sizes_parse_to_megabytes(text: str, megabytes: int) -> None:
    assert parse_mem_mb(text) == megabytes


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("04:00:00", 14400), ("10:30", 630), ("1-02:00:00", 93600), (90, 5400), ("2-12", 216000), ("45", 2700)],
)
def test_time_limits_parse_to_seconds(value: str | int, seconds: int) -> None:
    assert parse_time_seconds(value) == seconds


@pytest.mark.parametrize("value", ["", "0", "1:2:3:4", "00:61", "1-25:00:00", "abc", 0, -5])
def test_bad_time_limits_are_refused(value: str | int) -> None:
    with pytest.raises(ValueError):
        parse_time_seconds(value)


def test_recipe_hash_is_stable_across_key_order_and_ignores_resources(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        'name = "t"\ncommand = "go"\n[params]\na = 1\nb = 2\n[env]\nX = "1"\nY = "2"\n'
        '[resources]\ngpus = 1\n[tracking.wandb]\nentity = "e"\nproject = "p"\n',
        "a.toml",
    )
    b = write(
        tmp_path,
        '[env]\nY = "2"\nX = "1"\n[params]\nb = 2\na = 1\n[resources]\ngpus = 8\nmem = "1TB"\n'
        '[tracking.wandb]\nentity = "other"\nproject = "p"\n',
        "b.toml",
    )
    b.write_text('command = "go"\nname = "t"\n' + b.read_text())
    assert canonical_recipe_bytes(load_recipe(a)) == canonical_recipe_bytes(load_recipe(b))
    assert recipe_hash(load_recipe(a)) == recipe_hash(load_recipe(b))
    assert len(recipe_hash(load_recipe(a))) == 64


def test_recipe_hash_changes_with_what_the_run_computes() -> None:
    base = Recipe(name="t", command=["go"], params={"lr": 1})
    assert recipe_hash(base) != recipe_hash(Recipe(name="t", command=["go"], params={"lr": 2}))
    assert recipe_hash(base) != recipe_hash(Recipe(name="t", command=["go", "on"], params={"lr": 1}))
    assert recipe_hash(base) != recipe_hash(Recipe(name="t", command=["go"], params={"lr": 1}, env={"A": "1"}))


def test_explicit_defaults_hash_like_omitted_ones(tmp_path: Path) -> None:
    plain = load_recipe(write(tmp_path, 'name = "t"\ncommand = "go"\n', "a.toml"))
    spelled = load_recipe(write(tmp_path, 'name = "t"\ncommand = "go"\nrepo = "r"\n', "b.toml"))
    empty = load_recipe(write(tmp_path, 'name = "t"\ncommand = "go"\n[params]\n[env]\n', "c.toml"))
    assert recipe_hash(plain) == recipe_hash(empty)
    assert recipe_hash(plain) != recipe_hash(spelled)
