"""What a job is started with: its command line, environment and working directory."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from labctl.files import ClusterConfig, Recipe
from labctl.layout import source_dir
from labctl.secrets import split_secrets, write_secrets
from labctl.settings import settings_from_env


def job_command(recipe: Recipe) -> list[str]:
    """The recipe's command with its ``[args]`` appended as ``--key=value``, sorted by key as the original does."""
    return [*recipe.command, *(f"--{k}={v}" for k, v in sorted(recipe.args.items()))]


def job_workdir(run_dir: str | Path, recipe: Recipe) -> Path:
    """The repo snapshot (``source/<repo>``) when the recipe names a repo, else the run dir."""
    return source_dir(run_dir, recipe.repo) if recipe.repo else Path(run_dir)


def job_environment(config: ClusterConfig, recipe: Recipe, run_id: str, run_dir: str | Path) -> dict[str, str]:
    """Cluster ``[env]``, then the recipe's ``[env]``, then LABCTL_* and WANDB_* (which win).

    Secret values (from the cluster's ``[env]``; the recipe's are references by now) go to the
    run's 0600 ``.lab/secrets.env`` and come back as ``${NAME}``, so no script holds them.
    """
    env, secrets = split_secrets({**config.env, **recipe.env})
    write_secrets(run_dir, secrets)
    env.update(
        LABCTL_RUN_ID=run_id,
        LABCTL_RUN_DIR=str(run_dir),
        LABCTL_CONTEXT=str(Path(run_dir) / ".lab" / "context.json"),
    )
    wandb = recipe.tracking.wandb if recipe.tracking else None
    if wandb is not None:
        env.update(
            WANDB_ENTITY=wandb.entity,
            WANDB_PROJECT=wandb.project,
            WANDB_RUN_ID=run_id,
            WANDB_NAME=f"{recipe.name}-{run_id}",
            WANDB_RESUME="allow",
        )
        if wandb.group:
            env["WANDB_RUN_GROUP"] = wandb.group
    return env


def wandb_url(recipe: Recipe, run_id: str) -> str | None:
    wandb = recipe.tracking.wandb if recipe.tracking else None
    return f"https://wandb.ai/{wandb.entity}/{wandb.project}/runs/{run_id}" if wandb else None


def labctl_executable() -> str:
    """The labctl command a job calls back (hash-outputs), as installed beside this Python."""
    beside = Path(sys.executable).parent / "labctl"
    if beside.exists():
        return str(beside)
    return shutil.which("labctl") or settings_from_env().labctl_bin or "labctl"
