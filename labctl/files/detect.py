"""``labctl validate PATH``: tell which kind of file it is by its keys, check it fully, describe it."""

from __future__ import annotations

from pathlib import Path

from labctl.files.cluster import load_cluster_config
from labctl.files.decode import read_toml
from labctl.files.errors import FileFormatError
from labctl.files.pipeline import load_pipeline
from labctl.files.policy import load_policy
from labctl.files.recipe import CheckpointInput, FromInput, StageInput, load_recipe


def file_kind(path: str | Path) -> str:
    """``"recipe"``, ``"pipeline"``, ``"policy"`` or ``"cluster"``, by the file's top-level keys."""
    path = Path(path)
    raw, _ = read_toml(path)
    if "command" in raw:
        return "recipe"
    if "stages" in raw:
        return "pipeline"
    if "applies_to" in raw:
        return "policy"
    if "filesystem" in raw or "scheduler" in raw:
        return "cluster"
    raise FileFormatError(
        path,
        "",
        "not a recipe, pipeline, eval policy or cluster file: expected a top-level "
        "`command` (recipe), `stages` (pipeline), `applies_to` (policy) or "
        "`filesystem`/`scheduler` (cluster)",
    )


def validate_path(path: str | Path, *, strict: bool = False) -> str:
    """Validate any labctl file and describe it in one line. Reads only; raises FileFormatError.

    ``strict``: a key labctl does not know is an error, not a warning.
    """
    path = Path(path)
    kind = file_kind(path)
    if kind == "recipe":
        recipe = load_recipe(path, pipeline=True, eval_policy=True)
        n_in, n_out = len(recipe.inputs), len(recipe.outputs)
        text = f'recipe "{recipe.name}" ok: {_count(n_in, "input")}, {_count(n_out, "output")}'
        if recipe.sweep is not None:
            text += f", sweep over {recipe.sweep.arg} {recipe.sweep.start}..{recipe.sweep.end}"
        specs = recipe.inputs.values()
        if any(isinstance(s, StageInput | FromInput) for s in specs):
            text += " (pipeline stage only)"
        elif any(isinstance(s, CheckpointInput) for s in specs):
            text += " (eval policy recipe only)"
        return text
    if kind == "pipeline":
        plan = load_pipeline(path)
        order = " -> ".join(s.name for s in plan.stages)
        pin = f", from {plan.from_}" if plan.from_ else ""
        return f'pipeline "{plan.name}" ok: {_count(len(plan.stages), "stage")} ({order}){pin}'
    if kind == "policy":
        policy = load_policy(path)
        producer = f" from recipe {policy.applies_to.producer_recipe!r}" if policy.applies_to.producer_recipe else ""
        return (
            f'policy "{policy.name}" ok: evaluates {policy.applies_to.type} artifacts{producer} '
            f"every {policy.cadence.every_n_steps} steps with {policy.recipe}"
        )
    config = load_cluster_config(path, strict=strict)
    fs = config.filesystem
    return (
        f'cluster "{config.name}" ok: {config.scheduler.kind} scheduler, '
        f"{_count(len(fs.artifact_roots), 'artifact root')}, "
        f"{_count(len(fs.output_roots), 'output root')}, {_count(len(config.repos), 'repo')}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
