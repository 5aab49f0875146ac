"""Template tokens: only {word(.word)*} is a token; unresolved ones are errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.files import (
    FileFormatError,
    InputRef,
    Recipe,
    UnresolvedTokens,
    load_recipe,
    render,
    render_aliases,
    render_recipe,
    template_values,
    tokens_in,
)
from labctl.files.recipe import Output

DATA = Path(__file__).parent / "data" / "files"


def test_tokens_are_found_once_each_in_order() -> None:
    text = "{run.id} {params.lr} {run.id} {inputs.data.path} {user}"
    assert tokens_in(text) == ["run.id", "params.lr", "inputs.data.path", "user"]


@pytest.mark.parametrize(
    "text",
    ['--cfg={"a": 1}', "{}", "{ run.id }", "echo ${HOME} ${run.id}", "{a,b}", "{1..3}", '{"k": {"n": [1]}}'],
)
def test_non_tokens_pass_through_untouched(text: str) -> None:
    assert tokens_in(text) == []
    assert render(text, {}) == text


def test_render_replaces_tokens_and_keeps_inline_json() -> None:
    out = render('--cfg={"lr": {params.lr}} --id={run.id}', {"params.lr": "0.1", "run.id": "run_1"})
    assert out == '--cfg={"lr": 0.1} --id=run_1'


def test_render_lists_every_unresolved_token() -> None:
    with pytest.raises(UnresolvedTokens) as caught:
        render("{run.id} {a.b} {c}", {"run.id": "x"})
    assert caught.value.tokens == ["a.b", "c"]
    assert "{a.b}" in str(caught.value) and "{c}" in str(caught.value)


def test_render_recipe_fills_command_args_env_and_aliases() -> None:
    recipe = load_recipe(DATA / "recipes" / "train.toml")
    refs = {
        "data": InputRef(path="/a/owt", id="artifact_1", alias="openwebtext"),
        "tokenizer": InputRef("/t"),
    }
    first = template_values(run_id="run_9", run_dir="/runs/run_9", user="ada", inputs=refs)
    assert render_aliases(recipe, first, "train.toml") == {"ckpt": "train_run_9"}
    values = template_values(
        run_id="run_9",
        run_dir="/runs/run_9",
        user="ada",
        inputs=refs,
        output_paths={"ckpt": "/o/ada/train_run_9"},
    )
    rendered = render_recipe(recipe, values, "train.toml")
    assert rendered.command == [
        "python",
        "train.py",
        "--data=/a/owt",
        "--out=/o/ada/train_run_9",
        '--cfg={"warmup": 100}',
    ]
    assert rendered.args["run_name"] == "gpt2-small-run_9"
    assert rendered.env == {"HF_HOME": "/scratch/ada/hf", "MODEL": "gpt2-small"}
    assert rendered.outputs["ckpt"].alias == "train_run_9"


def test_nested_params_and_args_are_addressable() -> None:
    recipe = Recipe(
        name="t",
        command=["run", "{params.optim.lr}", "{args.steps}", "{params.flag}"],
        params={"optim": {"lr": 0.5}, "flag": True},
        args={"steps": "10"},
    )
    assert render_recipe(recipe, {}, "t.toml").command == ["run", "0.5", "10", "true"]


def test_unresolved_token_at_render_names_file_and_field() -> None:
    recipe = Recipe(
        name="t",
        command=["go"],
        env={"DATA": "{inputs.data.path}"},
        outputs={"o": Output(type="dataset", alias="x_{run.id}")},
    )
    with pytest.raises(FileFormatError) as caught:
        render_recipe(recipe, template_values(run_id="r", run_dir="/r", user="u"), "t.toml")
    assert caught.value.path == "t.toml"
    assert caught.value.field == "env.DATA"
    assert "{inputs.data.path}" in caught.value.message
