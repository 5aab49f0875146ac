"""Eval policies: which new artifacts get evaluated, by which recipe, how often."""

from __future__ import annotations

from pathlib import Path

import msgspec

from labctl.files.decode import beside, convert, dotted, line_of, read_toml
from labctl.files.errors import FileFormatError
from labctl.files.recipe import NAME, CheckpointInput, FromInput, Recipe, StageInput, load_recipe


class AppliesTo(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    type: str  # artifact kind, e.g. checkpoint
    producer_recipe: str | None = None  # only artifacts made by this recipe name


class Cadence(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    every_n_steps: int = 1


class EvalPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: str
    recipe: str  # absolute after load_policy (written relative to the policy file)
    applies_to: AppliesTo
    cadence: Cadence = msgspec.field(default_factory=Cadence)


def load_policy(path: str | Path) -> EvalPolicy:
    """Read a policy and check its eval recipe loads. ``recipe`` comes back absolute.

    Raises FileFormatError.
    """
    path = Path(path)
    raw, text = read_toml(path)
    policy = convert(raw, EvalPolicy, path, text)

    def fail(parts: list[str | int], message: str) -> FileFormatError:
        return FileFormatError(path, dotted(parts), message, line=line_of(text, parts))

    if not NAME.match(policy.name):
        raise fail(["name"], f"{policy.name!r} is not a valid name; use letters, digits, '.', '_' and '-'")
    if not policy.applies_to.type:
        raise fail(["applies_to", "type"], "must not be empty; expected an artifact kind, e.g. checkpoint")
    if policy.cadence.every_n_steps < 1:
        raise fail(["cadence", "every_n_steps"], "must be 1 or more")
    recipe_path = beside(path, policy.recipe)
    if not recipe_path.is_file():
        raise fail(["recipe"], f"recipe file not found: {recipe_path}")
    recipe = load_recipe(recipe_path, eval_policy=True)
    if checkpoint_role(recipe) is None:
        raise FileFormatError(
            recipe_path,
            "inputs",
            f'eval recipe of policy {policy.name!r} has no input named "checkpoint" (nor exactly one with '
            'type = "checkpoint") to receive the artifact',
        )
    return msgspec.structs.replace(policy, recipe=str(recipe_path))


def checkpoint_role(recipe: Recipe) -> str | None:
    """The input an eval policy fills with the checkpoint.

    The original's rule: the input named ``checkpoint``, whatever its type
    (an ``artifact`` input there names what a manual ``labctl run`` reads).
    Ours also takes a recipe's one ``type = "checkpoint"`` input under another name.
    """
    named = recipe.inputs.get("checkpoint")
    if named is not None and not isinstance(named, StageInput | FromInput):
        return "checkpoint"
    typed = [role for role, spec in recipe.inputs.items() if isinstance(spec, CheckpointInput)]
    return typed[0] if len(typed) == 1 else None


def policy_recipe(policy: EvalPolicy) -> Recipe:
    """The eval recipe of a loaded policy."""
    return load_recipe(policy.recipe, eval_policy=True)


def load_policies(directory: str | Path) -> list[EvalPolicy]:
    """Every ``*.toml`` policy in a directory, by file name. Raises FileFormatError."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileFormatError(directory, "", "policies directory not found")
    policies: list[EvalPolicy] = []
    seen: dict[str, Path] = {}
    for path in sorted(directory.glob("*.toml")):
        policy = load_policy(path)
        if policy.name in seen:
            raise FileFormatError(path, "name", f"policy {policy.name!r} is also defined in {seen[policy.name]}")
        seen[policy.name] = path
        policies.append(policy)
    return policies
