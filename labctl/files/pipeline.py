"""Pipeline files: stages, their recipes, and the order to run them in."""

from __future__ import annotations

import heapq
from pathlib import Path

import msgspec

from labctl.files.decode import beside, convert, dotted, line_of, read_toml
from labctl.files.errors import FileFormatError
from labctl.files.recipe import NAME, FromInput, Recipe, StageInput, load_recipe


class Stage(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    recipe: str  # path relative to the pipeline file


class PipelineFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: str
    from_: str | None = msgspec.field(default=None, name="from")  # pinned run id
    stages: dict[str, Stage]


class PlannedStage(msgspec.Struct, frozen=True):
    name: str
    recipe_path: str  # absolute
    recipe: Recipe
    parents: list[str]  # stages whose outputs this one reads, in declaration order


class PipelinePlan(msgspec.Struct, frozen=True):
    name: str
    path: str  # absolute path of the pipeline file
    from_: str | None
    stages: list[PlannedStage]  # topological: every stage after its parents


def load_pipeline(path: str | Path) -> PipelinePlan:
    """Read a pipeline file and every stage's recipe; check the graph. Raises FileFormatError."""
    path = Path(path)
    raw, text = read_toml(path)
    pipeline = convert(raw, PipelineFile, path, text)

    def fail(parts: list[str | int], message: str) -> FileFormatError:
        return FileFormatError(path, dotted(parts), message, line=line_of(text, parts))

    if not NAME.match(pipeline.name):
        raise fail(["name"], f"{pipeline.name!r} is not a valid name; use letters, digits, '.', '_' and '-'")
    if not pipeline.stages:
        raise fail(["stages"], "no stages; expected at least one [stages.<name>] table")
    if pipeline.from_ is not None and not pipeline.from_.strip():
        raise fail(["from"], "must not be empty; expected a run id")

    recipes: dict[str, tuple[Path, Recipe]] = {}
    loaded: dict[Path, Recipe] = {}
    for name, stage in pipeline.stages.items():
        if not NAME.match(name):
            raise fail(["stages", name], "bad stage name; use letters, digits, '.', '_' and '-'")
        recipe_path = beside(path, stage.recipe)
        if not recipe_path.is_file():
            raise fail(["stages", name, "recipe"], f"recipe file not found: {recipe_path}")
        if recipe_path not in loaded:  # a recipe shared by many stages is read once
            loaded[recipe_path] = load_recipe(recipe_path, pipeline=True)
        recipes[name] = (recipe_path, loaded[recipe_path])

    parents: dict[str, list[str]] = {}
    for name, (recipe_path, recipe) in recipes.items():
        parents[name] = []
        for role, spec in recipe.inputs.items():
            if isinstance(spec, FromInput) and pipeline.from_ is None:
                raise FileFormatError(
                    recipe_path,
                    f"inputs.{role}",
                    f'type = "from" input needs the pipeline {path} to pin a run with from = "<run id>"',
                )
            if not isinstance(spec, StageInput):
                continue
            if spec.stage not in recipes:
                known = ", ".join(recipes)
                raise FileFormatError(
                    recipe_path,
                    f"inputs.{role}.stage",
                    f"no stage {spec.stage!r} in pipeline {path}; stages are: {known}",
                )
            parent_recipe = recipes[spec.stage][1]
            if spec.role not in parent_recipe.outputs:
                offered = ", ".join(parent_recipe.outputs) or "none"
                raise FileFormatError(
                    recipe_path,
                    f"inputs.{role}.role",
                    f"stage {spec.stage!r} (recipe {parent_recipe.name!r}) has no output {spec.role!r}; "
                    f"its outputs are: {offered}",
                )
            if spec.stage not in parents[name]:
                parents[name].append(spec.stage)

    order = topological_order(parents)
    if isinstance(order, CycleFound):
        raise fail(["stages"], f"stages depend on each other in a cycle: {' -> '.join(order.cycle)}")
    return PipelinePlan(
        name=pipeline.name,
        path=str(path.absolute()),
        from_=pipeline.from_,
        stages=[
            PlannedStage(name=n, recipe_path=str(recipes[n][0]), recipe=recipes[n][1], parents=parents[n])
            for n in order
        ],
    )


class CycleFound(msgspec.Struct, frozen=True):
    cycle: list[str]  # first node repeated at the end: a -> b -> a


def topological_order(parents: dict[str, list[str]]) -> list[str] | CycleFound:
    """Nodes with parents first; ties keep declaration order. A cycle is returned, not raised.

    Kahn's algorithm with a heap of declaration indexes: the earliest-declared
    ready node goes next, in O(n log n + edges).
    """
    index = {name: i for i, name in enumerate(parents)}
    names = list(parents)
    waiting = {name: len(set(ps)) for name, ps in parents.items()}
    children: dict[str, list[str]] = {name: [] for name in parents}
    for name, ps in parents.items():
        for p in set(ps):
            children[p].append(name)
    ready = [index[n] for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = names[heapq.heappop(ready)]
        order.append(name)
        for child in children[name]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, index[child])
    if len(order) < len(parents):
        return CycleFound(_find_cycle(parents, set(order)))
    return order


def _find_cycle(parents: dict[str, list[str]], placed: set[str]) -> list[str]:
    # Every unplaced node has an unplaced parent: walk parents until a node repeats.
    node = next(n for n in parents if n not in placed)
    seen: list[str] = []
    while node not in seen:
        seen.append(node)
        node = next(p for p in parents[node] if p not in placed)
    cycle = [*seen[seen.index(node) :], node]
    cycle.reverse()  # parent -> child reads as the data flows
    return cycle
