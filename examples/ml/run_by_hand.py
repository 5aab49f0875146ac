"""Run the whole example without labctl, doing by hand what labctl would do.

Reads the real recipe, pipeline and policy files, renders their templates, and runs each job
the way LABCTL-FORMATS.md describes (cwd = a snapshot of examples/, LABCTL_* env, outputs under
an output root, markers checked, outputs made read-only once registered). Flow: hello, fail,
then the pipeline prepare -> train (sweep, throttled) -> report, then the eval policy over
every checkpoint; finally it checks that the report agrees with the evals and prints it.

    python3 examples/ml/run_by_hand.py [--keep] [--workdir DIR] [--verbose]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ML_DIR = Path(__file__).resolve().parent
REPOS = {"examples": ML_DIR.parent}
USER = "demo"
# As labctl reads them: {word(.word)*}, but not shell ${VAR}.
TOKEN = re.compile(r"(?<!\$)\{([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)\}")
STEP_NAME = re.compile(r"\d+$")


@dataclass
class Job:
    run_id: str
    recipe: dict
    run_dir: Path
    outputs: dict[str, Path]
    process: subprocess.Popen
    started: float
    rc: int | None = None
    seconds: float = 0.0


@dataclass
class Lab:
    root: Path
    aliases: dict[str, Path] = field(default_factory=dict)
    checkpoints: list[dict] = field(default_factory=list)
    runs: int = 0
    verbose: bool = False


def load_toml(path: Path) -> dict:
    with path.open("rb") as f:
        return tomllib.load(f)


def render(text: str, tokens: dict[str, str], where: str) -> str:
    def substitute(match: re.Match) -> str:
        if match.group(1) not in tokens:
            raise SystemExit(f"{where}: unresolved template token {match.group(0)}")
        return tokens[match.group(1)]

    return TOKEN.sub(substitute, text)


def resolve_input(lab: Lab, role: str, spec: dict, given: dict, run_dir: Path) -> Path:
    if isinstance(given.get(role), dict):
        return link_sweep_points(run_dir / ".lab" / "inputs" / role, given[role])
    if role in given:
        return given[role]
    if spec["type"] == "artifact":
        return lab.aliases[spec["artifact"]]
    if spec["type"] == "external":
        return Path(spec["path"])
    raise SystemExit(f"input {role!r} of type {spec['type']!r} was not provided")


def link_sweep_points(links: Path, points: dict[int, Path]) -> Path:
    """What a stage gets from a sweep stage: a directory of symlinks named by sweep index."""
    links.mkdir(parents=True)
    for index, path in points.items():
        (links / str(index)).symlink_to(path)
    links.chmod(0o555)  # inputs are read-only
    return links


def submit(lab: Lab, recipe_path: Path, given: dict, args: dict[str, str]) -> Job:
    """Given inputs map role -> path, or role -> {sweep index: path} for a sweep stage."""
    recipe = load_toml(recipe_path)
    lab.runs += 1
    run_id = f"run_{lab.runs:04d}"
    run_dir = lab.root / "runs" / USER / run_id
    (run_dir / ".lab").mkdir(parents=True)
    specs = recipe.get("inputs", {})
    inputs = {r: resolve_input(lab, r, s, given, run_dir) for r, s in specs.items()}
    all_args = {**recipe.get("args", {}), **args}
    tokens = {"run.id": run_id, "run.dir": str(run_dir)}
    tokens |= {f"params.{k}": str(v) for k, v in recipe.get("params", {}).items()}
    tokens |= {f"args.{k}": str(v) for k, v in all_args.items()}
    for role, path in inputs.items():
        tokens |= {f"inputs.{role}.path": str(path), f"inputs.{role}.id": f"artifact_{role}"}
        tokens[f"inputs.{role}.alias"] = recipe["inputs"][role].get("artifact", "")
    outputs = {}
    for role, spec in recipe.get("outputs", {}).items():
        alias = render(spec["alias"], tokens, f"{recipe_path} outputs.{role}.alias")
        outputs[role] = lab.root / "outputs" / spec["type"] / USER / alias
        if outputs[role].exists():
            raise SystemExit(f"{recipe_path}: output {outputs[role]} exists; submission refused")
        tokens[f"outputs.{role}.path"] = tokens[f"outputs.{role}.dir"] = str(outputs[role])
    command = recipe["command"]
    argv = ["bash", "-c", command] if isinstance(command, str) else list(command)
    argv += [f"--{k}={v}" for k, v in all_args.items()]
    argv = [render(a, tokens, f"{recipe_path} command") for a in argv]
    cwd = run_dir
    if "repo" in recipe:
        cwd = run_dir / "source" / recipe["repo"]
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPOS[recipe["repo"]], cwd, ignore=ignore)
    context = {"run_id": run_id, "recipe": recipe["name"], "argv": argv}
    context |= {"inputs": {r: str(p) for r, p in inputs.items()}}
    context |= {"outputs": {r: str(p) for r, p in outputs.items()}}
    (run_dir / ".lab" / "context.json").write_text(json.dumps(context, indent=2))
    env = {**os.environ, **{k: render(str(v), tokens, "env") for k, v in recipe.get("env", {}).items()}}
    env |= {"LABCTL_RUN_ID": run_id, "LABCTL_RUN_DIR": str(run_dir), "LABCTL_JOB_ID": run_id}
    env["LABCTL_CONTEXT"] = str(run_dir / ".lab" / "context.json")
    log = (run_dir / ".lab" / "job.log").open("w")
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Job(run_id, recipe, run_dir, outputs, process, time.monotonic())


def finish(lab: Lab, job: Job) -> Job:
    job.rc = job.process.wait()
    job.seconds = time.monotonic() - job.started
    name = job.recipe["name"]
    lines = (job.run_dir / ".lab" / "job.log").read_text().splitlines() or [""]
    print(f"  {job.run_id} {name:<11} exit {job.rc} {job.seconds:5.2f}s | {lines[-1]}")
    if lab.verbose:
        print("\n".join(f"      | {line}" for line in lines[:-1]))
    if job.rc == 0:
        for role, spec in job.recipe.get("outputs", {}).items():
            register(lab, job, role, spec)
    return job


def register(lab: Lab, job: Job, role: str, spec: dict) -> None:
    path = job.outputs[role]
    if spec["type"] == "checkpoint_stream":
        steps = [d for d in sorted(path.iterdir()) if STEP_NAME.search(d.name)]
        steps = [d for d in steps if (d / spec["marker"]).is_file()]
        if not steps:
            raise SystemExit(f"{job.run_id}: checkpoint stream {path} has no marked step")
        for step_dir in steps:
            step = int(STEP_NAME.search(step_dir.name).group(0))
            lab.checkpoints.append({"path": step_dir, "step": step, "producer": job.recipe["name"]})
    elif not (path / spec["marker"]).is_file():
        raise SystemExit(f"{job.run_id}: marker {spec['marker']} missing in {path}")
    lab.aliases[path.name] = path
    make_read_only(path)


def make_read_only(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + dirnames:
            entry = Path(dirpath, name)
            entry.chmod(entry.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def run_all(lab: Lab, submissions: list, throttle: int) -> list[Job]:
    """Run (recipe, inputs, args) submissions, at most `throttle` at a time, in order."""
    pending, running, done = list(submissions), [], []
    while pending or running:
        while pending and len(running) < throttle:
            running.append(submit(lab, *pending.pop(0)))
        job = running.pop(0)
        done.append(finish(lab, job))
    return done


def stage_order(stages: dict[str, dict]) -> list[str]:
    order: list[str] = []
    while len(order) < len(stages):
        ready = [
            name
            for name, recipe in stages.items()
            if name not in order and all(s["stage"] in order for s in stage_inputs(recipe).values())
        ]
        if not ready:
            raise SystemExit("pipeline stages form a cycle")
        order += ready
    return order


def stage_inputs(recipe: dict) -> dict[str, dict]:
    return {r: s for r, s in recipe.get("inputs", {}).items() if s["type"] == "stage"}


def run_pipeline(lab: Lab, pipeline_path: Path) -> dict[str, list[Job]]:
    pipeline = load_toml(pipeline_path)
    paths = {n: pipeline_path.parent / s["recipe"] for n, s in pipeline["stages"].items()}
    recipes = {name: load_toml(path) for name, path in paths.items()}
    print(f"pipeline {pipeline['name']}: {' -> '.join(stage_order(recipes))}")
    finished: dict[str, list[Job]] = {}
    for name in stage_order(recipes):
        recipe = recipes[name]
        given = {r: stage_input(finished, s) for r, s in stage_inputs(recipe).items()}
        sweep = recipe.get("sweep")
        if sweep is None:
            submissions, throttle = [(paths[name], given, {})], 1
        else:
            points = range(sweep["start"], sweep["end"] + 1)
            submissions = [(paths[name], given, {sweep["arg"]: str(i)}) for i in points]
            throttle = sweep.get("throttle", len(submissions))
        print(f"stage {name}: {len(submissions)} run(s), throttle {throttle}")
        finished[name] = run_all(lab, submissions, throttle)
        if any(job.rc != 0 for job in finished[name]):
            raise SystemExit(f"stage {name} failed; its dependents would be dependency_failed")
    return finished


def stage_input(finished: dict[str, list[Job]], spec: dict) -> Path | dict[int, Path]:
    """A plain stage's output path; for a sweep stage, each point's output by sweep index."""
    jobs = finished[spec["stage"]]
    sweep = jobs[0].recipe.get("sweep")
    if sweep is None:
        return jobs[0].outputs[spec["role"]]
    indexes = range(sweep["start"], sweep["end"] + 1)
    return {i: job.outputs[spec["role"]] for i, job in zip(indexes, jobs, strict=True)}


def run_eval_policy(lab: Lab, policy_path: Path) -> list[Job]:
    policy = load_toml(policy_path)
    applies, every = policy["applies_to"], policy["cadence"]["every_n_steps"]
    recipe_path = (policy_path.parent / policy["recipe"]).resolve()
    chosen = [
        c
        for c in lab.checkpoints
        if applies["type"] == "checkpoint"
        and c["producer"] == applies.get("producer_recipe", c["producer"])
        and c["step"] % every == 0
    ]
    print(f"eval policy {policy['name']}: {len(chosen)} checkpoint(s)")
    return run_all(lab, [(recipe_path, {"checkpoint": c["path"]}, {}) for c in chosen], 2)


def check_report_matches_evals(report_dir: Path, evals: list[Job]) -> None:
    by_checkpoint = {}
    for job in evals:
        checkpoint = Path(json.loads((job.run_dir / ".lab" / "context.json").read_text())["inputs"]["checkpoint"])
        metrics = json.loads((job.outputs["metrics"] / "metrics.json").read_text())
        by_checkpoint[checkpoint.resolve()] = metrics["accuracy"]
    for row in json.loads((report_dir / "evaluations.json").read_text()):
        if by_checkpoint[Path(row["checkpoint"]).resolve()] != row["accuracy"]:
            raise SystemExit(f"report and eval disagree on {row['checkpoint']}")
    print(f"report agrees with all {len(by_checkpoint)} evals")


def expect(job: Job, rc: int) -> None:
    if job.rc != rc:
        raise SystemExit(f"{job.recipe['name']}: expected exit {rc}, got {job.rc}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where to put runs and outputs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    parser.add_argument("--verbose", action="store_true", help="print every job's full output")
    args = parser.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="labctl-example-"))
    lab = Lab(root.resolve(), verbose=args.verbose)
    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        t = time.monotonic()
        expect(run_all(lab, [(ML_DIR / "recipes/hello.toml", {}, {})], 1)[0], 0)
        expect(run_all(lab, [(ML_DIR / "recipes/fail.toml", {}, {})], 1)[0], 3)
        timings["hello + fail"] = time.monotonic() - t
        t = time.monotonic()
        stages = run_pipeline(lab, ML_DIR / "pipeline.toml")
        timings["pipeline"] = time.monotonic() - t
        t = time.monotonic()
        evals = run_eval_policy(lab, ML_DIR / "policies/eval-checkpoints.toml")
        for job in evals:
            expect(job, 0)
        timings["evals"] = time.monotonic() - t
        report_dir = stages["report"][0].outputs["report"]
        check_report_matches_evals(report_dir, evals)
        print("\n" + (report_dir / "report.md").read_text())
        print((report_dir / "best.json").read_text())
        for phase, seconds in {**timings, "total": time.monotonic() - started}.items():
            print(f"{phase:>13}: {seconds:5.2f}s")
    finally:
        if args.keep or args.workdir:
            print(f"workdir kept: {root}")
        else:
            for dirpath, dirnames, _ in os.walk(root):
                for name in dirnames:
                    Path(dirpath, name).chmod(0o755)
            shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
