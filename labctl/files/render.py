"""Fill a recipe's templates for one run: command, args, env and output aliases."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec

from labctl.files.decode import dotted
from labctl.files.errors import FileFormatError
from labctl.files.recipe import Recipe, template_fields
from labctl.files.template import UnresolvedTokens, flatten, render, tokens_in


class InputRef(msgspec.Struct, frozen=True):
    """What a resolved input offers to templates as ``{inputs.R.path|id|alias}``.

    An input without an id or alias (an external path has no alias) leaves
    the token unresolved, which refuses the submission: it never reads "".
    """

    path: str
    id: str | None = None
    alias: str | None = None


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
        if ref.id:
            values[f"inputs.{role}.id"] = ref.id
        if ref.alias:
            values[f"inputs.{role}.alias"] = ref.alias
    for role, out in (output_paths or {}).items():
        values[f"outputs.{role}.path"] = str(out)
        values[f"outputs.{role}.dir"] = str(out)
    return values


def render_aliases(recipe: Recipe, values: Mapping[str, str], path: str | Path) -> dict[str, str]:
    """Each output role's rendered alias: needed first, since output paths are made from it.

    Args that need output paths are not known yet; an alias using one is refused as unresolved.
    """
    full = _with_params(recipe, values)
    full.update({f"args.{k}": v for k, v in _render_args(recipe, full, path, partial=True).items()})
    return {
        role: _render_field(output.alias, full, path, ["outputs", role, "alias"])
        for role, output in recipe.outputs.items()
    }


def render_recipe(recipe: Recipe, values: Mapping[str, str], path: str | Path) -> Recipe:
    """A copy of ``recipe`` with command, args, env and output aliases rendered.

    ``values`` comes from template_values; ``{recipe.name}``, ``{params.K}``
    and ``{args.K}`` are taken from the recipe itself (args rendered first, an
    arg may use other args). Any token left unresolved raises FileFormatError
    naming the field.
    """
    full = _with_params(recipe, values)
    args = _render_args(recipe, full, path, partial=False)
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


def _render_args(recipe: Recipe, values: Mapping[str, str], path: str | Path, *, partial: bool) -> dict[str, str]:
    """``[args]`` rendered, each after the args it uses (``cache/{args.model}_{args.len}``).

    ``partial`` leaves out the args that cannot be rendered yet instead of failing.
    """
    full = dict(values)
    pending = dict(recipe.args)
    done: dict[str, str] = {}
    while pending:
        ready = [k for k, v in pending.items() if not any(t[5:] in pending for t in _arg_tokens(v))]
        if not ready:  # every pending arg waits on another pending arg
            if partial:
                break
            cycle = ", ".join(f"args.{k}" for k in pending)
            raise FileFormatError(
                path, dotted(["args", next(iter(pending))]), f"[args] use each other in a cycle: {cycle}"
            )
        for key in ready:
            text = pending.pop(key)
            try:
                done[key] = full[f"args.{key}"] = render(text, full)
            except UnresolvedTokens:
                if not partial:
                    _render_field(text, full, path, ["args", key])  # raises, naming the field
    return {k: done[k] for k in recipe.args if k in done}  # in the file's order, as the command gets them


def _arg_tokens(text: str) -> list[str]:
    return [t for t in tokens_in(text) if t.startswith("args.")]


def _with_params(recipe: Recipe, values: Mapping[str, str]) -> dict[str, str]:
    full = dict(values)
    full["recipe.name"] = recipe.name
    for key, value in recipe.params.items():
        full.update(flatten(f"params.{key}", value))
    return full


def _render_field(text: str, values: Mapping[str, str], path: str | Path, where: list[str | int]) -> str:
    try:
        return render(text, values)
    except UnresolvedTokens as exc:
        raise FileFormatError(path, dotted(where), str(exc)) from None
