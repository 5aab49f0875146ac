"""Fill a recipe's templates for one run: command, args, env and output aliases."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec

from labctl.files.decode import dotted
from labctl.files.errors import FileFormatError
from labctl.files.recipe import Recipe, template_fields
from labctl.files.template import UnresolvedTokens, flatten, render


class InputRef(msgspec.Struct, frozen=True):
    """What a resolved input offers to templates as ``{inputs.R.path|id|alias}``."""

    path: str
    id: str = ""
    alias: str = ""


def template_values(
    *,
    run_id: str,
    run_dir: str | Path,
    user: str,
    inputs: Mapping[str, InputRef] | None = None,
    output_paths: Mapping[str, str | Path] | None = None,
) -> dict[str, str]:
    """The flat token -> value mapping for one run (params and args are added by render_recipe)."""
    values = {"run.id": run_id, "run.dir": str(run_dir), "user": user}
    for role, ref in (inputs or {}).items():
        values[f"inputs.{role}.path"] = ref.path
        values[f"inputs.{role}.id"] = ref.id
        values[f"inputs.{role}.alias"] = ref.alias
    for role, out in (output_paths or {}).items():
        values[f"outputs.{role}.path"] = str(out)
        values[f"outputs.{role}.dir"] = str(out)
    return values


def render_aliases(recipe: Recipe, values: Mapping[str, str], path: str | Path) -> dict[str, str]:
    """Each output role's rendered alias: needed first, since output paths are made from it."""
    full = _with_params(recipe, values)
    full.update({f"args.{k}": _render_field(v, full, path, ["args", k]) for k, v in recipe.args.items()})
    return {
        role: _render_field(output.alias, full, path, ["outputs", role, "alias"])
        for role, output in recipe.outputs.items()
    }


def render_recipe(recipe: Recipe, values: Mapping[str, str], path: str | Path) -> Recipe:
    """A copy of ``recipe`` with command, args, env and output aliases rendered.

    ``values`` comes from template_values; ``{params.K}`` and ``{args.K}`` are
    taken from the recipe itself (args rendered first). Any token left
    unresolved raises FileFormatError naming the field.
    """
    full = _with_params(recipe, values)
    args = {k: _render_field(v, full, path, ["args", k]) for k, v in recipe.args.items()}
    full.update({f"args.{k}": v for k, v in args.items()})
    rendered = {tuple(where): _render_field(text, full, path, where) for where, text in template_fields(recipe)}
    return msgspec.structs.replace(
        recipe,
        command=[rendered[("command", i)] for i in range(len(recipe.command))],
        args=args,
        env={k: rendered[("env", k)] for k in recipe.env},
        outputs={
            role: msgspec.structs.replace(out, alias=rendered[("outputs", role, "alias")])
            for role, out in recipe.outputs.items()
        },
    )


def _with_params(recipe: Recipe, values: Mapping[str, str]) -> dict[str, str]:
    full = dict(values)
    for key, value in recipe.params.items():
        full.update(flatten(f"params.{key}", value))
    return full


def _render_field(text: str, values: Mapping[str, str], path: str | Path, where: list[str | int]) -> str:
    try:
        return render(text, values)
    except UnresolvedTokens as exc:
        raise FileFormatError(path, dotted(where), str(exc)) from None
