"""Fill an original labctl registry (from ``ddl.VERSIONS``) with realistic data, as a team's would look.

Many users; training runs in pipelines (prep -> train -> eval) whose checkpoints
stream steps; sweeps (SLURM array jobs, ``<job>_<task>``); eval requests with
retries; global aliases (and per-user ones where the version has them); W&B
tracking; the original's own ``events`` rows; every run state. Artifacts get
real bytes on disk in the version's store layout: ``_objects/<h[:2]>/<h>/``
with ``.meta.json`` (eb54594) or in place at ``<root>/<kind>/<user>/<alias>``
with path-derived ids (newer).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from labctl.artifacts.hashing import dir_content_hash

#: a recipe with no repo and no inputs: resubmitted unchanged, it must be a cache hit after an import
PREP_RECIPE: dict[str, Any] = {"name": "prep", "command": ["python", "prep.py"], "params": {"n": 1000}}
PREP_TOML = 'name = "prep"\ncommand = ["python", "prep.py"]\n\n[params]\nn = 1000\n'
T0 = 1_760_000_000  # the registry's first run (epoch seconds)
TERMINAL = ("succeeded", "succeeded", "succeeded", "failed", "cancelled", "timeout", "oom", "unknown_terminal")


@dataclass
class Seeded:
    """What was written, for tests to find things by."""

    run_ids: list[str] = field(default_factory=list)
    succeeded_train: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)  # artifact ids whose bytes were changed after hashing
    users: list[str] = field(default_factory=list)
    prep_runs: list[str] = field(default_factory=list)  # one succeeded run of PREP_RECIPE per user


class _Rows:
    def __init__(self) -> None:
        self.tables: dict[str, list[tuple[Any, ...]]] = {}

    def add(self, table: str, *values: Any) -> None:
        self.tables.setdefault(table, []).append(values)


_COLUMNS = {
    "users": ("name", "created_at", "pg_role"),
    "pipelines": ("id", "name", "pipeline_path", "user", "created_at"),
    "runs": (
        "id",
        "recipe_name",
        "recipe_hash",
        "status",
        "job_id",
        "run_dir",
        "repo",
        "source_path",
        "recipe_json",
        "context_json",
        "created_at",
        "finished_at",
        "pipeline_id",
        "dependency_on",
        "stage_name",
        "submitted_by",
        "cache_key",
    ),
    "artifacts": ("id", "kind", "path", "producer_run_id", "metadata_json", "created_at", "user"),
    "artifact_aliases": ("alias", "artifact_id", "created_at"),
    "artifact_user_aliases": ("user", "alias", "kind", "artifact_id", "created_at"),
    "run_inputs": ("run_id", "role", "artifact_id", "resolved_path"),
    "run_outputs": ("run_id", "role", "artifact_id"),
    "eval_requests": (
        "eval_key",
        "checkpoint_artifact_id",
        "eval_recipe_hash",
        "policy_id",
        "eval_run_id",
        "state",
        "attempts",
        "user",
        "created_at",
        "updated_at",
    ),
    "tracking": ("run_id", "entity", "project", "url", "group_name", "source", "created_at"),
    "events": ("run_id", "event_type", "payload_json", "created_at"),
}
_JSON = {"recipe_json", "context_json", "dependency_on", "metadata_json", "payload_json"}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Seeder:
    """Writes one registry; ``version`` is a key of ``ddl.VERSIONS``."""

    def __init__(self, version: str, root: Path, *, seed: int = 7, files: bool = True) -> None:
        self.version = version
        self.content_addressed = version == "eb54594"
        self.root = root
        self.files = files
        self.rand = random.Random(seed)
        self.rows = _Rows()
        self.out = Seeded()
        self.clock = T0
        self.job = 4_000_000
        self.n = 0

    # --------------------------------------------------------------- helpers

    def _id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{sha(f'{prefix}{self.n}{self.version}')[:12]}"

    def _tick(self, seconds: int = 60) -> int:
        self.clock += seconds
        return self.clock

    def _artifact(
        self,
        kind: str,
        user: str,
        alias: str,
        producer: str | None,
        created: int,
        metadata: dict[str, Any],
        content: bytes,
    ) -> tuple[str, str]:
        """Write an artifact's bytes in the version's layout; return ``(id, path)``."""
        if self.content_addressed:
            staging = self.root / "staging" / alias
            if self.files:
                staging.mkdir(parents=True, exist_ok=True)
                (staging / "data.bin").write_bytes(content)
                digest = dir_content_hash(staging)
            else:
                digest = sha(alias + content.hex())
            artifact_id = "artifact_" + digest[:16]
            path = self.root / "artifacts" / kind / "_objects" / digest[:2] / digest
            if self.files and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                staging.rename(path)
                meta = {
                    "id": artifact_id,
                    "kind": kind,
                    "user": user,
                    "alias": alias,
                    "content_hash": digest,
                    "producer_run_id": producer,
                    "metadata": metadata,
                    "created_at": created,
                }
                (path / ".meta.json").write_text(json.dumps(meta))
            self.rows.add("artifacts", artifact_id, kind, str(path), digest, producer, metadata, created, user, alias)
            self.rows.add("artifact_user_aliases", user, alias, kind, artifact_id, created)
        else:
            path = self.root / "artifacts" / kind / user / alias
            if self.files:
                path.mkdir(parents=True, exist_ok=True)
                (path / "data.bin").write_bytes(content)
            artifact_id = "artifact_" + sha(str(path))[:16]
            self.rows.add("artifacts", artifact_id, kind, str(path), producer, metadata, created, user)
        return artifact_id, str(path)

    def _run(
        self,
        user: str,
        name: str,
        status: str,
        *,
        recipe: dict[str, Any],
        pipeline: str | None = None,
        stage: str | None = None,
        parents: Sequence[str] = (),
        job_id: str | None = None,
    ) -> tuple[str, int]:
        run_id = self._id("run")
        created = self._tick(self.rand.randint(30, 600))
        finished = None if status in ("created", "submitted", "running") else created + self.rand.randint(60, 9000)
        if job_id is None and status != "created":
            self.job += 1
            job_id = str(self.job)
        run_dir = str(self.root / "runs" / "runs" / user / run_id)
        context = {
            "schema_version": 1,
            "run_id": run_id,
            "user": user,
            "host": f"login{self.rand.randint(1, 2)}",
            "git_commit": sha(name)[:40],
            "params": recipe.get("params", {}),
        }
        dependency = {"afterok": list(parents)} if parents else None
        cache_key = sha(json.dumps(recipe, sort_keys=True) + user) if status != "created" else None
        self.rows.add(
            "runs",
            run_id,
            name,
            sha(json.dumps(recipe, sort_keys=True)),
            status,
            job_id,
            run_dir,
            "myrepo",
            run_dir + "/source/myrepo",
            recipe,
            context,
            created,
            finished,
            pipeline,
            dependency,
            stage,
            user,
            cache_key,
        )
        for i, kind in enumerate(["run_submitted", "run_status", "run_status"][: 1 + (status != "created") * 2]):
            payload = {"status": status if i == 2 else ("submitted" if i else "created"), "job_id": job_id}
            self.rows.add("events", run_id, kind, payload, created + i)
        self.out.run_ids.append(run_id)
        return run_id, created

    # ----------------------------------------------------------------- seeding

    def seed(
        self, *, users: int = 6, pipelines_per_user: int = 3, sweeps_per_user: int = 1, user_prefix: str = "user"
    ) -> Seeded:
        names = [f"{user_prefix}{i}" for i in range(users)]
        self.out.users = names
        if not self.content_addressed:
            for u in names:
                self.rows.add("users", u, T0 - 100, u)
        for u in names:
            prep_id, _ = self._run(u, "prep", "succeeded", recipe=PREP_RECIPE)
            self.out.prep_runs.append(prep_id)
            ds_id, ds_path = self._artifact(
                "dataset", u, f"ds_{u}", None, self._tick(), {"rows": 1000}, f"data of {u}".encode()
            )
            self.rows.add("artifact_aliases", f"ds_{u}", ds_id, self.clock)
            for p in range(pipelines_per_user):
                self._pipeline(u, p, ds_id, ds_path)
            for s in range(sweeps_per_user):
                self._sweep(u, s)
        self.rows.add("events", None, "cluster_note", {"note": "maintenance window"}, self._tick())
        if self.content_addressed and self.files:
            self._corrupt_one()
        return self.out

    def _pipeline(self, user: str, p: int, ds_id: str, ds_path: str) -> None:
        pid = self._id("pipeline")
        self.rows.add("pipelines", pid, f"pretrain_{p}", f"/home/{user}/pipelines/pretrain.toml", user, self._tick())
        outcome = self.rand.choice(["succeeded", "succeeded", "failed", "running"])
        train_recipe = {
            "name": "train",
            "repo": "myrepo",
            "command": ["python", "train.py", "--lr={params.lr}"],
            "params": {"lr": 0.001 * (p + 1)},
            "inputs": {"data": {"type": "artifact", "artifact": f"ds_{user}"}},
            "outputs": {"ckpt": {"type": "checkpoint_stream", "marker": "done", "alias": "train_{run.id}"}},
            "resources": {"gpus": 1, "time": "04:00:00"},
            "tracking": {"wandb": {"entity": "lab", "project": "pretrain"}},
        }
        train_status = outcome if outcome != "running" else "running"
        train_id, created = self._run(user, "train", train_status, recipe=train_recipe, pipeline=pid, stage="train")
        self.rows.add("run_inputs", train_id, "data", ds_id, ds_path)
        self.rows.add(
            "tracking",
            train_id,
            "lab",
            "pretrain",
            f"https://wandb.ai/lab/pretrain/runs/{train_id}",
            f"pipe_{p}",
            "recipe",
            created,
        )
        eval_status = "created" if outcome == "running" else ("succeeded" if outcome == "succeeded" else "created")
        if outcome == "failed":
            eval_status = "cancelled"
        train_job = self.rows.tables["runs"][-1][4]
        eval_recipe = {
            "name": "eval",
            "repo": "myrepo",
            "command": ["python", "eval.py"],
            "inputs": {"ckpt": {"type": "stage", "stage": "train", "role": "ckpt"}},
            "outputs": {"result": {"type": "eval_result", "marker": "result.json", "alias": "eval_{run.id}"}},
        }
        eval_id, _ = self._run(
            user, "eval", eval_status, recipe=eval_recipe, pipeline=pid, stage="eval", parents=[train_job]
        )
        if outcome != "succeeded":
            return
        self.out.succeeded_train.append(train_id)
        last_ckpt = ""
        for step in (1000, 2000, 3000):
            ckpt_id, ckpt_path = self._artifact(
                "checkpoint",
                user,
                f"train_{train_id}_step{step}",
                train_id,
                self._tick(),
                {"step": step},
                f"{train_id} weights at {step}".encode(),
            )
            self.rows.add("run_outputs", train_id, "ckpt", ckpt_id)
            self.rows.add("events", train_id, "artifact_registered", {"artifact_id": ckpt_id}, self.clock)
            last_ckpt, last_path = ckpt_id, ckpt_path
            eval_run, _ = self._run(user, "eval_ckpt", "succeeded", recipe=eval_recipe)
            self.rows.add("run_inputs", eval_run, "ckpt", ckpt_id, ckpt_path)
            result = {"accuracy": round(self.rand.random(), 4), "loss": round(self.rand.random() * 3, 4)}
            res_id, _ = self._artifact(
                "eval_result", user, f"eval_{eval_run}", eval_run, self._tick(), {"result": result}, eval_run.encode()
            )
            self.rows.add("run_outputs", eval_run, "result", res_id)
            self.rows.add(
                "eval_requests",
                sha(f"{ckpt_id}:evalhash:per_ckpt"),
                ckpt_id,
                sha("eval recipe"),
                "per_ckpt",
                eval_run,
                "submitted",
                self.rand.randint(1, 3),
                user,
                self.clock,
                self.clock + 5,
            )
        self.rows.add("artifact_aliases", f"train_{train_id}", last_ckpt, self.clock)
        self.rows.add("run_inputs", eval_id, "ckpt", last_ckpt, last_path)

    def _sweep(self, user: str, s: int) -> None:
        self.job += 1
        array = self.job
        for task in range(4):
            status = self.rand.choice(TERMINAL)
            recipe = {
                "name": "lr_sweep",
                "command": ["python", "sweep.py"],
                "args": {"lr_idx": str(task)},
                "sweep": {"arg": "lr_idx", "start": 0, "end": 3, "throttle": 2},
            }
            self._run(user, "lr_sweep", status, recipe=recipe, job_id=f"{array}_{task}")

    def _corrupt_one(self) -> None:
        for row in self.rows.tables["artifacts"]:
            if row[1] == "checkpoint":
                (Path(row[2]) / "data.bin").write_bytes(b"bit rot")
                self.out.corrupted.append(row[0])
                return

    # ---------------------------------------------------------------- writing

    def write(self, conn: psycopg.Connection[Any]) -> None:
        """COPY every table (the registry is empty or these rows are new)."""
        order = ["users", "pipelines", "runs", "artifacts", "artifact_aliases", "artifact_user_aliases"]
        order += ["run_inputs", "run_outputs", "eval_requests", "tracking", "events"]
        with conn.transaction():
            if not self.content_addressed:
                conn.execute("SET CONSTRAINTS ALL DEFERRED")
            for table in order:
                rows = self.rows.tables.get(table)
                if not rows:
                    continue
                cols = list(_COLUMNS[table])
                if table == "artifacts" and self.content_addressed:
                    cols = ["id", "kind", "path", "content_hash", "producer_run_id", "metadata_json"]
                    cols += ["created_at", "user", "alias_segment"]
                if table == "artifact_user_aliases" and not self.content_addressed:
                    continue
                quoted = ", ".join(f'"{c}"' for c in cols)
                with conn.cursor() as cur, cur.copy(f"COPY public.{table} ({quoted}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(
                            [
                                json.dumps(v) if c in _JSON and v is not None else v
                                for c, v in zip(cols, row, strict=True)
                            ]
                        )
        self.rows = _Rows()


def seed_registry(
    conn: psycopg.Connection[Any], version: str, root: Path, *, files: bool = True, seed: int = 7, **sizes: int
) -> Seeded:
    """Fill an empty registry of ``version`` under ``root`` (artifact bytes there too)."""
    s = Seeder(version, root, seed=seed, files=files)
    out = s.seed(**sizes)
    s.write(conn)
    return out
