"""Where a run's files live on shared storage, laid out as the original labctl lays them out.

::

    <runs_base>/runs/<user>/<run id>/
        source/<repo>/                  the repo snapshot the job runs in
        .lab/context.json               what the job gets as $LABCTL_CONTEXT
        .lab/submit.sh
        .lab/<job name>_<job id>.log    the job's stdout and stderr (SLURM's %x_%j)
        .lab/provenance/<repo>/         git head, status, patches, uv.lock
"""

from __future__ import annotations

import re
from pathlib import Path

RUNS_DIRNAME = "runs"
SOURCE_DIRNAME = "source"
LAB_DIRNAME = ".lab"
#: where runs recorded before the original's layout was adopted kept their log
LEGACY_LOG = "log.txt"


def user_runs_dir(runs_base: str | Path, user: str) -> Path:
    return Path(runs_base, RUNS_DIRNAME, user)


def run_dir(runs_base: str | Path, user: str, run_id: str) -> Path:
    return Path(runs_base, RUNS_DIRNAME, user, run_id)  # one Path built, not three: made for every run recorded


def source_dir(run_dir: str | Path, repo: str) -> Path:
    return Path(run_dir) / SOURCE_DIRNAME / repo


def provenance_dir(run_dir: str | Path, repo: str) -> Path:
    return Path(run_dir) / LAB_DIRNAME / "provenance" / repo


def job_name(recipe_name: str) -> str:
    """A recipe's job name, made as the original makes it: characters other than letters,
    digits, ``_`` and ``-`` become ``_``, at most 64 of them."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", recipe_name)[:64]


def local_job_id(run_id: str) -> str:
    """The job id the original gives a run on its local scheduler (``$LABCTL_JOB_ID``)."""
    return f"local-{run_id}"


def job_log(run_dir: str | Path, name: str, job_id: str) -> Path:
    """``.lab/<job name>_<job id>.log``: what SLURM's ``--output=.lab/%x_%j.log`` names it."""
    return Path(run_dir) / LAB_DIRNAME / f"{job_name(name)}_{job_id}.log"


def find_job_log(run_dir: str | Path) -> Path | None:
    """The run's newest job log (a resubmitted run has one per job), as the original finds it; None before any."""
    lab = Path(run_dir) / LAB_DIRNAME
    try:
        logs = [p for p in lab.iterdir() if p.suffix == ".log" and p.is_file()]
    except FileNotFoundError:
        logs = []
    if logs:
        return max(logs, key=lambda p: (p.stat().st_mtime_ns, p.name))
    legacy = Path(run_dir) / LEGACY_LOG
    return legacy if legacy.is_file() else None
