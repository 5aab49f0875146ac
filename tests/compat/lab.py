"""A cluster the way a team on the original labctl has it: a cluster.toml, a git repo of scripts, shared roots.

The compat tests drive the real ``labctl`` CLI against it (local executor,
a fresh Postgres per test).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import USER, run_cli, wait_for

#: the original's example scripts, small enough for a laptop: same flags, same files written
TRAIN_PY = """\
import argparse, json, os, pathlib
p = argparse.ArgumentParser()
p.add_argument("--out")  # without it (sweep.toml), the checkpoint output's path from $LABCTL_CONTEXT
p.add_argument("--lr-index", default=None)
p.add_argument("--steps", type=int, default=3)
a, _ = p.parse_known_args()
out = a.out or json.load(open(os.environ["LABCTL_CONTEXT"]))["outputs"]["checkpoint"]["path"]
for step in range(1, a.steps + 1):
    d = pathlib.Path(out) / f"step{step}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "weights.bin").write_text(f"step {step} lr {a.lr_index}\\n")
    (d / "manifest.ocdbt").write_text("ok\\n")
print("trained", os.environ["LABCTL_RUN_ID"])
"""
EVAL_PY = """\
import argparse, json, pathlib
p = argparse.ArgumentParser()
p.add_argument("--checkpoint", required=True)
p.add_argument("--out", required=True)
a = p.parse_args()
ck = pathlib.Path(a.checkpoint)
score = len((ck / "weights.bin").read_text()) if (ck / "weights.bin").exists() else 0
(pathlib.Path(a.out) / "metrics.json").write_text(json.dumps({"checkpoint": str(ck), "score": score}))
"""
FIT_PY = """\
import argparse, pathlib
p = argparse.ArgumentParser()
p.add_argument("--data_dir")
p.add_argument("--output_dir")
p.add_argument("--lr")
a = p.parse_args()
d = pathlib.Path(a.output_dir) / "step100"
d.mkdir(parents=True, exist_ok=True)
(d / "_CHECKPOINT_METADATA").write_text(f"lr={a.lr} data={a.data_dir}\\n")
"""
#: reports what a job sees: its working directory, $LABCTL_JOB_ID and $LABCTL_CONTEXT
READ_CONTEXT_PY = """\
import json, os
c = json.load(open(os.environ["LABCTL_CONTEXT"]))
seen = {"cwd": os.getcwd(), "job_id": os.environ["LABCTL_JOB_ID"], "inputs": c["inputs"]}
seen["kind"] = c["outputs"]["seen"]["kind"]
open(os.path.join(c["outputs"]["seen"]["path"], "seen.json"), "w").write(json.dumps(seen))
print("hello from", c["run_id"])
"""
KINDS = ("checkpoint", "dataset", "eval_result", "model", "external")
OUTPUT_TYPES = ("checkpoint_stream", "checkpoint", "dataset", "eval_result", "model")


class Lab:
    """Paths and helpers of one test's cluster."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.runs_base = root / "shared" / "runs"
        self.repo = root / "src" / "myrepo"
        self.policies = root / "policies"
        self.cluster = root / "cluster.toml"
        self.bin = root / "bin"
        # `uv run X` (the original's examples) runs X: no uv on test machines
        self.env = {**env, "LABCTL_CLUSTER": str(self.cluster), "PATH": f"{self.bin}:{env.get('PATH', '')}"}

    def write(self) -> None:
        for sub in ("scripts",):
            (self.repo / sub).mkdir(parents=True, exist_ok=True)
        (self.repo / "scripts" / "train.py").write_text(TRAIN_PY)
        (self.repo / "scripts" / "eval.py").write_text(EVAL_PY)
        (self.repo / "scripts" / "read_context.py").write_text(READ_CONTEXT_PY)
        (self.repo / "fit.py").write_text(FIT_PY)
        (self.repo / "uv.lock").write_text("# lock\n")
        subprocess.run(["git", "init", "-q", str(self.repo)], check=True)
        subprocess.run(["git", "-C", str(self.repo), "add", "."], check=True)
        # its own identity: a machine (CI's root, a fresh HOME) may have none configured
        who = ["-c", "user.name=lab", "-c", "user.email=lab@example.org"]
        subprocess.run(["git", "-C", str(self.repo), *who, "commit", "-qm", "scripts"], check=True)
        self.policies.mkdir(parents=True, exist_ok=True)
        self.bin.mkdir(parents=True, exist_ok=True)
        (self.bin / "uv").write_text('#!/bin/bash\n[ "$1" = run ] && shift\nexec "$@"\n')
        (self.bin / "uv").chmod(0o755)
        # the original's examples run `python`: the tests' own interpreter, whatever PATH has (Debian has none)
        (self.bin / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        (self.bin / "python").chmod(0o755)
        shared = self.root / "shared"
        lines = [
            'name = "compat"',
            "",
            "[filesystem]",
            f'runs_base = "{self.runs_base}"',
            "",
            "[filesystem.artifact_roots]",
            *(f'{k} = "{shared / "artifacts" / k}"' for k in KINDS),
            "",
            "[filesystem.output_roots]",
            *(f'{k} = "{shared / "outputs" / k}"' for k in OUTPUT_TYPES),
            "",
            "[repos]",
            f'myrepo = "{self.repo}"',
            f'omegalax = "{self.repo}"',
            "",
            "[scheduler]",
            'kind = "local"',
            "",
            "[local]",  # the node the original's examples ask for (up to 8 GPUs, 32 CPUs, 256GB)
            "cpus = 48",
            'mem = "256GB"',
            'gpus = ["0", "1", "2", "3", "4", "5", "6", "7"]',
            "",
            "[dispatch]",
            f'policies_dir = "{self.policies}"',
        ]
        self.cluster.write_text("\n".join(lines) + "\n")

    def user(self, name: str) -> dict[str, str]:
        return {**self.env, "LABCTL_USER": name}

    def cli(self, *args: str, user: str = USER, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.user(user), *args, check=check)

    def recipe(self, name: str, text: str) -> Path:
        path = self.root / "recipes" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def run(self, recipe: Path, *args: str, user: str = USER) -> dict[str, str]:
        """``labctl run RECIPE --wait`` as ``user``; the ``key: value`` lines it printed."""
        proc = self.cli("run", str(recipe), "--wait", *args, user=user, check=False)
        assert proc.returncode == 0, f"labctl run {recipe.name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return printed(proc.stdout)


def printed(stdout: str) -> dict[str, str]:
    """The ``key: value`` lines of a command's output (the first of each key)."""
    found: dict[str, str] = {}
    for key, value in re.findall(r"^([a-z_]+): ?(.*)$", stdout, re.MULTILINE):
        found.setdefault(key, value)
    return found


def run_state(conn: psycopg.Connection[Any], run_id: str) -> str:
    row = conn.execute("SELECT status FROM runs WHERE id = %s", (run_id,)).fetchone()
    assert row is not None, f"no run {run_id}"
    return str(row[0])


def wait_state(conn: psycopg.Connection[Any], run_id: str, *states: str, timeout: float = 60) -> str:
    return wait_for(lambda: (s := run_state(conn, run_id)) in states and s, f"{run_id} to be {states}", timeout)


def context_of(run_dir: str | Path) -> dict[str, Any]:
    return dict(json.loads((Path(run_dir) / ".lab" / "context.json").read_text()))
