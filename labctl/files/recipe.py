"""Recipe files: the Structs, loading, validation, and the canonical bytes behind the cache key."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import msgspec

from labctl.files.decode import Part, beside, convert, dotted, line_of, read_toml
from labctl.files.errors import FileFormatError
from labctl.files.template import TOKEN, tokens_in
from labctl.files.units import parse_mem_mb, parse_time_seconds
from labctl.files.values import value_problems
from labctl.names import NAME as PATH_NAME
from labctl.names import NAME_RULE

NAME = re.compile(r"^[A-Za-z0-9._-]+$")
ROLE = re.compile(r"^[A-Za-z0-9_-]+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: more tasks than this is a mistake (and would hold every run in memory at once)
MAX_SWEEP_POINTS = 10_000
INPUT_FIELDS = ("path", "id", "alias")
OUTPUT_FIELDS = ("path", "dir")


class _File(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True, frozen=True):
    """Base of every file Struct: unknown keys are errors; defaults stay out of encodings."""


# ---- resources


class Component(_File, frozen=True):
    """One block of a heterogeneous SLURM job; the script body runs on component 0."""

    gpus: int = 0
    cpus: int = 1
    mem: str = "4GB"
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    nodes: int | str | None = None
    exclude_nodes: list[str] = []
    sbatch_extra: list[str] = []


class Resources(_File, frozen=True):
    gpus: int = 0
    cpus: int = 1
    mem: str = "4GB"
    time: str | int = "00:10:00"
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    #: passed to ``--nodes``: a count or a SLURM range like ``"1-2"``
    nodes: int | str | None = None
    #: passed to ``--exclude``; a string is one entry (SLURM accepts ``"a,b"``)
    exclude_nodes: list[str] = []
    #: extra ``#SBATCH`` flags, verbatim, e.g. ``"--constraint=a100"``
    sbatch_extra: list[str] = []
    components: list[Component] = []


# ---- inputs (tagged by `type`)


class ArtifactInput(_File, tag="artifact", tag_field="type", frozen=True):
    artifact: str  # alias of a registered artifact


class ExternalInput(_File, tag="external", tag_field="type", frozen=True):
    path: str  # absolute path outside labctl's store


class StageInput(_File, tag="stage", tag_field="type", frozen=True):
    stage: str  # a stage of the same pipeline
    role: str  # one of that stage's output roles


class FromInput(_File, tag="from", tag_field="type", frozen=True):
    role: str  # output role of the pipeline's pinned `from` run


class CheckpointInput(_File, tag="checkpoint", tag_field="type", frozen=True):
    """Filled in by an eval policy with the checkpoint being evaluated."""


Input = ArtifactInput | ExternalInput | StageInput | FromInput | CheckpointInput


class Output(_File, frozen=True):
    type: str  # output kind: checkpoint_stream, dataset, eval_result, ...
    alias: str  # templated, e.g. "train_{run.id}"
    marker: str | None = None  # without it the output is not registered


class Wandb(_File, frozen=True):
    entity: str
    project: str
    group: str | None = None


class Tracking(_File, frozen=True):
    wandb: Wandb | None = None


class Sweep(_File, frozen=True):
    arg: str  # the [args] key varied
    start: int
    end: int  # inclusive
    throttle: int | None = None  # max concurrent tasks (SLURM `%N`)
    #: recipe run once after every task succeeded; absolute after load_recipe
    aggregate: str | None = None


class Recipe(_File, frozen=True):
    name: str
    command: list[str]
    repo: str | None = None
    params: dict[str, Any] = {}
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    resources: Resources = msgspec.field(default_factory=Resources)
    inputs: dict[str, Input] = {}
    outputs: dict[str, Output] = {}
    tracking: Tracking | None = None
    sweep: Sweep | None = None


# ---- loading


def load_recipe(path: str | Path, *, pipeline: bool = False, eval_policy: bool = False) -> Recipe:
    """Read, decode and validate a recipe file.

    ``pipeline`` allows ``stage``/``from`` inputs, ``eval_policy`` allows
    ``checkpoint`` inputs. ``sweep.aggregate`` comes back as an absolute path.
    Raises FileFormatError.
    """
    path = Path(path)
    raw, text = read_toml(path)
    recipe = convert(normalize_recipe_table(raw), Recipe, path, text)
    if recipe.sweep is not None and recipe.sweep.aggregate is not None:
        aggregate = beside(path, recipe.sweep.aggregate)
        recipe = msgspec.structs.replace(recipe, sweep=msgspec.structs.replace(recipe.sweep, aggregate=str(aggregate)))
    validate_recipe(recipe, path, pipeline=pipeline, eval_policy=eval_policy, text=text)
    return recipe


def normalize_recipe_table(raw: dict[str, Any]) -> dict[str, Any]:
    """The accepted shorthands, spelled out: a string command, scalar args, a string exclude list."""
    raw = dict(raw)
    if isinstance(raw.get("command"), str):
        raw["command"] = ["bash", "-c", raw["command"]]
    args = raw.get("args")
    if isinstance(args, dict):
        raw["args"] = {k: _scalar_arg(v) for k, v in args.items()}
    resources = raw.get("resources")
    if isinstance(resources, dict):
        resources = _normalize_exclude(resources)
        components = resources.get("components")
        if isinstance(components, list):
            resources["components"] = [_normalize_exclude(c) if isinstance(c, dict) else c for c in components]
        raw["resources"] = resources
    return raw


def _scalar_arg(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value  # strings pass; anything else is left for msgspec to reject


def _normalize_exclude(table: dict[str, Any]) -> dict[str, Any]:
    table = dict(table)
    if isinstance(table.get("exclude_nodes"), str):
        table["exclude_nodes"] = [table["exclude_nodes"]]
    return table


# ---- validation


def validate_recipe(
    recipe: Recipe,
    path: str | Path,
    *,
    pipeline: bool = False,
    eval_policy: bool = False,
    text: str | None = None,
) -> None:
    """Check what the types alone cannot; raises FileFormatError for the first problem."""

    def fail(parts: list[Part], message: str) -> None:
        line = line_of(text, parts) if text is not None else None
        raise FileFormatError(path, dotted(parts), message, line=line)

    for where, why in value_problems(msgspec.to_builtins(recipe), []):
        fail(where, why)
    if not NAME.match(recipe.name):
        fail(["name"], f"{recipe.name!r} is not a valid name; use letters, digits, '.', '_' and '-'")
    if not recipe.command or not recipe.command[0]:
        fail(["command"], "must not be empty; expected an argv list or a shell string")
    for key in recipe.args:
        if not key or "=" in key or key.strip() != key or " " in key:
            fail(["args", key], "bad argument name; it is passed as --name=value")
    for key in recipe.env:
        if not ENV_NAME.match(key):
            fail(["env", key], "not a valid environment variable name")
    _validate_resources(recipe.resources, fail)
    for role, spec in recipe.inputs.items():
        _validate_input(role, spec, fail, pipeline=pipeline, eval_policy=eval_policy)
    for role, output in recipe.outputs.items():
        if not ROLE.match(role):
            fail(["outputs", role], "bad role name; use letters, digits, '_' and '-'")
        if not output.type:
            fail(["outputs", role, "type"], "must not be empty; expected an output kind, e.g. dataset")
        if not output.alias.strip():
            fail(["outputs", role, "alias"], 'must not be empty; expected e.g. "train_{run.id}"')
        if not PATH_NAME.match(TOKEN.sub("x", output.alias)):
            # checked again once rendered: a token's value can break the rule too
            fail(["outputs", role, "alias"], f"{output.alias!r}: an alias is one directory name: {NAME_RULE}")
        if output.marker is not None and (
            not output.marker or Path(output.marker).is_absolute() or ".." in Path(output.marker).parts
        ):
            fail(["outputs", role, "marker"], "expected a file name relative to the output directory")
    if recipe.tracking is not None and recipe.tracking.wandb is not None:
        wandb = recipe.tracking.wandb
        if not wandb.entity or not wandb.project:
            fail(["tracking", "wandb"], "entity and project must not be empty")
    if recipe.sweep is not None:
        _validate_sweep(recipe.sweep, fail)
    _validate_tokens(recipe, fail)


def _validate_resources(resources: Resources, fail: Any) -> None:
    blocks: list[tuple[list[Part], Resources | Component]] = [(["resources"], resources)]
    blocks += [(["resources", "components", i], c) for i, c in enumerate(resources.components)]
    for where, block in blocks:
        if block.gpus < 0:
            fail([*where, "gpus"], "must be 0 or more")
        if block.cpus < 1:
            fail([*where, "cpus"], "must be 1 or more")
        try:
            parse_mem_mb(block.mem)
        except ValueError as exc:
            fail([*where, "mem"], str(exc))
        if isinstance(block.nodes, int) and block.nodes < 1:
            fail([*where, "nodes"], "must be 1 or more")
    try:
        parse_time_seconds(resources.time)
    except ValueError as exc:
        fail(["resources", "time"], str(exc))


def _validate_input(role: str, spec: Input, fail: Any, *, pipeline: bool, eval_policy: bool) -> None:
    where: list[Part] = ["inputs", role]
    if not ROLE.match(role):
        fail(where, "bad role name; use letters, digits, '_' and '-'")
    if isinstance(spec, ArtifactInput) and not spec.artifact:
        fail([*where, "artifact"], "must not be empty; expected an artifact alias")
    if isinstance(spec, ExternalInput) and not Path(spec.path).is_absolute():
        fail([*where, "path"], f"{spec.path!r} is not absolute; expected an absolute path")
    if isinstance(spec, StageInput | FromInput) and not pipeline:
        kind = "stage" if isinstance(spec, StageInput) else "from"
        fail([*where, "type"], f'type = "{kind}" inputs are only allowed in recipes run as pipeline stages')
    if isinstance(spec, StageInput) and not spec.stage:
        fail([*where, "stage"], "must not be empty; expected a stage name")
    if isinstance(spec, StageInput | FromInput) and not spec.role:
        fail([*where, "role"], "must not be empty; expected an output role")
    if isinstance(spec, CheckpointInput) and not eval_policy:
        fail([*where, "type"], 'type = "checkpoint" inputs are only allowed in recipes run by an eval policy')


def _validate_sweep(sweep: Sweep, fail: Any) -> None:
    if not sweep.arg:
        fail(["sweep", "arg"], "must not be empty; expected the [args] key to vary")
    if sweep.start < 0:
        fail(["sweep", "start"], "must be 0 or more (it is an array task index)")
    if sweep.start > sweep.end:
        fail(["sweep"], f"start ({sweep.start}) is after end ({sweep.end}); the range is inclusive")
    if sweep.end - sweep.start + 1 > MAX_SWEEP_POINTS:
        fail(["sweep"], f"{sweep.end - sweep.start + 1:,} points; at most {MAX_SWEEP_POINTS:,} in one sweep")
    if sweep.throttle is not None and sweep.throttle < 1:
        fail(["sweep", "throttle"], "must be 1 or more")


def template_fields(recipe: Recipe) -> list[tuple[list[Part], str]]:
    """Every templated string of a recipe with where it sits: command, args, env, output aliases."""
    fields: list[tuple[list[Part], str]] = [(["command", i], s) for i, s in enumerate(recipe.command)]
    fields += [(["args", k], v) for k, v in recipe.args.items()]
    fields += [(["env", k], v) for k, v in recipe.env.items()]
    fields += [(["outputs", r, "alias"], o.alias) for r, o in recipe.outputs.items()]
    return fields


def unknown_token_reason(recipe: Recipe, token: str, *, in_alias: bool) -> str | None:
    """Why ``token`` can never resolve for this recipe, or None if it can."""
    head, _, rest = token.partition(".")
    if token in ("run.id", "run.dir", "user", "recipe.name"):
        return None
    if head == "params":
        return None if param_exists(recipe.params, rest) else f"no [params] key {rest!r}"
    if head == "args":
        known = set(recipe.args) | ({recipe.sweep.arg} if recipe.sweep else set())
        return None if rest in known else f"no [args] key {rest!r}"
    role, _, attr = rest.partition(".")
    if head == "inputs":
        if role not in recipe.inputs:
            return f"no input role {role!r}"
        if attr == "alias" and isinstance(recipe.inputs[role], ExternalInput):
            return "an external input has no alias; use .path or .id"
        return None if attr in INPUT_FIELDS else f"expected inputs.{role}.path, .id or .alias"
    if head == "outputs":
        if in_alias:
            return "an output alias cannot use output paths (they are made from the alias)"
        if role not in recipe.outputs:
            return f"no output role {role!r}"
        return None if attr in OUTPUT_FIELDS else f"expected outputs.{role}.path or .dir"
    return "expected run.id, run.dir, user, recipe.name, params.K, args.K, inputs.R.path|id|alias or outputs.R.path"


def param_exists(params: Any, dotted_key: str) -> bool:
    for key in dotted_key.split("."):
        if not isinstance(params, dict) or key not in params:
            return False
        params = params[key]
    return True


def _validate_tokens(recipe: Recipe, fail: Any) -> None:
    for where, text in template_fields(recipe):
        in_alias = where[0] == "outputs"
        for token in tokens_in(text):
            reason = unknown_token_reason(recipe, token, in_alias=in_alias)
            if reason is None and in_alias and token.startswith("args."):
                used = _args_used(recipe, token[5:])
                if used is None or any(t.startswith("outputs.") for k in used for t in tokens_in(recipe.args[k])):
                    reason = "that arg uses output paths (they are made from the alias)"
            if reason is not None:
                fail(where, f"template token {{{token}}} cannot be resolved: {reason}")
    for key in recipe.args:
        if _args_used(recipe, key) is None:
            fail(["args", key], "[args] use each other in a cycle")


def _args_used(recipe: Recipe, key: str) -> set[str] | None:
    """The args ``key`` uses, itself included, directly or through others; None if they form a cycle."""
    seen: set[str] = set()
    path: list[str] = []

    def visit(k: str) -> bool:
        if k in path:
            return False
        if k in seen or k not in recipe.args:
            return True
        seen.add(k)
        path.append(k)
        ok = all(visit(t[5:]) for t in tokens_in(recipe.args[k]) if t.startswith("args."))
        path.pop()
        return ok

    return seen if visit(key) else None


# ---- cache key


def canonical_recipe_bytes(recipe: Recipe) -> bytes:
    """Deterministic JSON of what a run computes, for the cache key.

    Leaves out ``resources`` and ``tracking`` (where and how it runs is not
    what it computes) and ``sweep`` (a sweep task's value is already in its
    ``args``). Defaults are omitted, so a new optional field keeps old keys.
    """
    builtins = msgspec.to_builtins(recipe)
    for key in ("resources", "tracking", "sweep"):
        builtins.pop(key, None)
    return msgspec.json.encode(builtins, order="sorted")


def recipe_hash(recipe: Recipe) -> str:
    """sha256 hex of ``canonical_recipe_bytes``."""
    return hashlib.sha256(canonical_recipe_bytes(recipe)).hexdigest()
