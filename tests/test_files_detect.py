"""`labctl validate PATH` tells the four file kinds apart by their keys and describes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.files import FileFormatError, file_kind, validate_path

DATA = Path(__file__).parent / "data" / "files"


@pytest.mark.parametrize(
    ("relative", "kind", "description"),
    [
        ("recipes/train.toml", "recipe", 'recipe "train" ok: 2 inputs, 1 output, sweep over seed 0..9'),
        ("recipes/eval.toml", "recipe", 'recipe "eval-ppl" ok: 1 input, 1 output (eval policy recipe only)'),
        ("pipeline/train.toml", "recipe", 'recipe "train" ok: 1 input, 1 output (pipeline stage only)'),
        ("pipeline/pipeline.toml", "pipeline", 'pipeline "pretrain" ok: 3 stages (prep -> train -> eval)'),
        ("policies/ppl.toml", "policy", 'policy "ppl-every-1000" ok: evaluates checkpoint artifacts'),
        ("cluster.toml", "cluster", 'cluster "lab-cluster" ok: slurm scheduler, 3 artifact roots'),
    ],
)
def test_each_example_file_is_recognised_and_described(relative: str, kind: str, description: str) -> None:
    assert file_kind(DATA / relative) == kind
    assert validate_path(DATA / relative).startswith(description)


def test_file_of_no_known_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('title = "hello"\n')
    with pytest.raises(FileFormatError, match="not a recipe, pipeline, eval policy or cluster file"):
        validate_path(path)


def test_validate_reports_the_first_problem_of_the_detected_kind(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('name = "x"\ncommand = "go"\n[resources]\nmem = "lots"\n')
    with pytest.raises(FileFormatError) as caught:
        validate_path(path)
    assert caught.value.field == "resources.mem"
