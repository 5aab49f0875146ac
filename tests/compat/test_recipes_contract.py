"""The recipe contract of the original (docs/RECIPE_CONTRACT.md and src/template.rs), end to end.

Output directories exist when the command starts; ``{outputs.R.path}`` works
in ``[args]``; ``{recipe.name}`` and ``[args]`` that use other args render;
``{inputs.R.id}`` / ``.alias`` render for every input kind or are refused,
never as an empty string.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from labctl.files import FileFormatError, Recipe, load_recipe, render_aliases, render_recipe, template_values
from tests.compat.lab import Lab


def _output_path(conn: psycopg.Connection[Any], run_id: str, role: str) -> Path:
    row = conn.execute("SELECT path FROM run_outputs WHERE run_id = %s AND role = %s", (run_id, role)).fetchone()
    assert row is not None, f"{run_id} registered no output {role!r}"
    return Path(row[0])


def test_a_command_writes_into_its_output_directory_without_making_it(lab: Lab, conn: psycopg.Connection[Any]) -> None:
    recipe = lab.recipe(
        "write.toml",
        """\
name    = "write_report"
repo    = "myrepo"
command = ["bash", "-c", "echo done > {outputs.report.path}/report.txt"]

[outputs.report]
type   = "dataset"
marker = "report.txt"
alias  = "report_{run.id}"
""",
    )
    shown = lab.run(recipe)
    assert (_output_path(conn, shown["run_id"], "report") / "report.txt").read_text() == "done\n"


MINIMAL = """\
name = "fit_qwen3vl"
repo = "omegalax"
command = ["uv", "run", "python", "fit.py"]

[resources]
gpus = 8
cpus = 32
mem  = "256GB"
time = "08:00:00"

[inputs.dataset]
type     = "artifact"
artifact = "ifeval_replay_v1"

[outputs.checkpoint]
type   = "checkpoint_stream"
marker = "_CHECKPOINT_METADATA"
alias  = "fit_qwen3vl_{run.id}"

[args]
data_dir   = "{inputs.dataset.path}"
output_dir = "{outputs.checkpoint.path}"
lr         = "{params.lr}"

[params]
lr = "3e-5"

[tracking.wandb]
entity  = "p-doom"
project = "fit"
group   = "qwen3vl-replay"
"""


def test_the_contracts_minimal_example_submits_with_an_output_path_in_args(
    lab: Lab, conn: psycopg.Connection[Any]
) -> None:
    """docs/RECIPE_CONTRACT.md "Minimal example", verbatim (``uv`` is a stand-in that runs its arguments)."""
    data = lab.root / "data" / "ifeval"
    data.mkdir(parents=True)
    lab.cli("register-external", "--alias", "ifeval_replay_v1", "--path", str(data), "--kind", "dataset")
    recipe = lab.recipe("fit.toml", MINIMAL)
    assert lab.cli("validate", str(recipe)).returncode == 0

    shown = lab.run(recipe)

    stream = _output_path(conn, shown["run_id"], "checkpoint").parent
    assert stream.name == f"fit_qwen3vl_{shown['run_id']}"
    assert (stream / "step100" / "_CHECKPOINT_METADATA").read_text() == f"lr=3e-5 data={data}\n"


def test_recipe_name_and_args_that_use_other_args_render(lab: Lab, conn: psycopg.Connection[Any]) -> None:
    """The original's template tests: ``{recipe.name}_{run.id}``, ``cache/{args.model_id}_len_{args.max_length}``."""
    recipe = lab.recipe(
        "args.toml",
        """\
name    = "lora_qwen3vl2b_128k"
repo    = "myrepo"
command = ["python", "-c", "import json, sys; open(sys.argv[1] + '/argv.json', 'w').write(json.dumps(sys.argv[2:]))",
           "{outputs.out.path}"]

[args]
cache_dir  = "cache/{args.model_id}_len_{args.max_length}"
model_id   = "Qwen/Qwen3-VL-2B-Instruct"
max_length = "131072"
tag        = "{recipe.name}_{run.id}"

[outputs.out]
type   = "dataset"
marker = "argv.json"
alias  = "{recipe.name}_{run.id}"
""",
    )
    shown = lab.run(recipe)
    run_id = shown["run_id"]
    out = _output_path(conn, run_id, "out")
    assert json.loads((out / "argv.json").read_text()) == [
        "--cache_dir=cache/Qwen/Qwen3-VL-2B-Instruct_len_131072",
        "--max_length=131072",
        "--model_id=Qwen/Qwen3-VL-2B-Instruct",
        f"--tag=lora_qwen3vl2b_128k_{run_id}",
    ]  # sorted by key, as the original appends them
    alias = conn.execute("SELECT alias FROM aliases WHERE artifact_id = (SELECT artifact_id FROM run_outputs "
                         "WHERE run_id = %s)", (run_id,)).fetchone()  # fmt: skip
    assert alias == (f"lora_qwen3vl2b_128k_{run_id}",)


def test_args_that_use_each_other_in_a_cycle_are_refused_by_validate(lab: Lab) -> None:
    recipe = lab.recipe(
        "cycle.toml",
        'name = "c"\ncommand = ["true"]\n[args]\na = "{args.b}"\nb = "x{args.a}"\n',
    )
    proc = lab.cli("validate", str(recipe), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"labctl: error: {recipe}:4: args.a: [args] use each other in a cycle"]


def test_an_external_inputs_id_is_the_id_register_external_gives_it(lab: Lab, conn: psycopg.Connection[Any]) -> None:
    data = lab.root / "data" / "raw"
    data.mkdir(parents=True)
    recipe = lab.recipe(
        "ext.toml",
        f"""\
name    = "ext_id"
repo    = "myrepo"
command = ["bash", "-c", "echo {{inputs.raw.id}} > {{outputs.out.path}}/id.txt"]

[inputs.raw]
type = "external"
path = "{data}"

[outputs.out]
type   = "dataset"
marker = "id.txt"
alias  = "ext_{{inputs.raw.id}}"
""",
    )
    shown = lab.run(recipe)
    registered = lab.cli("register-external", "--alias", "raw", "--path", str(data), "--kind", "dataset").stdout
    artifact_id = registered.split()[1]
    out = _output_path(conn, shown["run_id"], "out")
    assert (out / "id.txt").read_text() == f"{artifact_id}\n"
    assert conn.execute("SELECT 1 FROM aliases WHERE alias = %s", (f"ext_{artifact_id}",)).fetchone()


def test_an_external_inputs_alias_is_refused_not_rendered_empty(lab: Lab) -> None:
    recipe = lab.recipe(
        "ext_alias.toml",
        'name = "e"\ncommand = ["true"]\n[inputs.raw]\ntype = "external"\npath = "/tmp"\n'
        '[outputs.out]\ntype = "dataset"\nalias = "eval_{inputs.raw.alias}"\n',
    )
    proc = lab.cli("validate", str(recipe), check=False)
    assert proc.returncode == 2
    assert "template token {inputs.raw.alias} cannot be resolved: an external input has no alias" in proc.stderr


def test_an_artifact_input_given_by_id_reads_its_alias(lab: Lab, conn: psycopg.Connection[Any]) -> None:
    data = lab.root / "data" / "d"
    data.mkdir(parents=True)
    registered = lab.cli("register-external", "--alias", "dsv1", "--path", str(data), "--kind", "dataset").stdout
    artifact_id = registered.split()[1]
    recipe = lab.recipe(
        "by_id.toml",
        f"""\
name    = "by_id"
repo    = "myrepo"
command = ["bash", "-c", "echo {{inputs.d.alias}} {{inputs.d.id}} > {{outputs.out.path}}/x"]
[inputs.d]
type     = "artifact"
artifact = "{artifact_id}"
[outputs.out]
type   = "dataset"
marker = "x"
alias  = "of_{{inputs.d.alias}}"
""",
    )
    shown = lab.run(recipe)
    assert (_output_path(conn, shown["run_id"], "out") / "x").read_text() == f"dsv1 {artifact_id}\n"


def test_an_input_without_an_id_refuses_the_token_instead_of_rendering_it_empty() -> None:
    recipe = Recipe(name="t", command=["go", "{inputs.d.id}"])
    values = template_values(run_id="r", run_dir="/r", user="u", inputs={"d": _ref("/d")})
    with pytest.raises(FileFormatError, match=r"unresolved template token\(s\): \{inputs\.d\.id\}"):
        render_recipe(recipe, values, "t.toml")


def test_an_output_alias_cannot_use_an_arg_made_from_output_paths(tmp_path: Path) -> None:
    path = tmp_path / "alias_cycle.toml"
    path.write_text(
        'name = "t"\ncommand = ["go"]\n[args]\nout = "{outputs.o.path}"\n'
        '[outputs.o]\ntype = "dataset"\nalias = "x_{args.out}"\n'
    )
    with pytest.raises(FileFormatError, match="that arg uses output paths"):
        load_recipe(path)
    recipe = Recipe(name="t", command=["go"], args={"out": "{outputs.o.path}", "n": "1"})
    assert render_aliases(recipe, template_values(run_id="r", run_dir="/r", user="u"), "t.toml") == {}


def _ref(path: str) -> Any:
    from labctl.files import InputRef

    return InputRef(path=path)
