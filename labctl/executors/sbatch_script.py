"""The job script `.lab/submit.sh`: `#SBATCH` header (SLURM only) and the bash body every executor runs.

The body exports the run's environment, runs the user's command in the
working directory, hashes outputs on the compute node after exit 0, and exits
with the user's exit code. The local executor writes the same body behind
``SHEBANG`` without the header.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from labctl.executors.base import JobSpec
from labctl.files.cluster import SlurmSettings
from labctl.files.recipe import Component, Resources
from labctl.files.units import parse_mem_mb, parse_time_seconds
from labctl.secrets import REFERENCE, SECRETS_FILE

SHEBANG = "#!/bin/bash\n"
#: in an array element, the id sacct and squeue show for it (``123_4``), not the element's raw id
SLURM_JOB_ID_EXPR = "${SLURM_JOB_ID}"
SLURM_ARRAY_ELEMENT_ID_EXPR = "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
SLURM_ARRAY_INDEX_EXPR = "${SLURM_ARRAY_TASK_ID}"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def render_sbatch_script(
    job: JobSpec,
    *,
    resources: Resources,
    slurm: SlurmSettings,
    env: Mapping[str, str],
    command: Sequence[str],
    workdir: Path,
    labctl_bin: str,
    run_dir: Path,
    sweep_arg: str | None = None,
) -> str:
    """The whole `.lab/submit.sh` for sbatch: header, then the shared body."""
    array = job.array is not None
    body = render_script_body(
        env=env,
        command=command,
        workdir=workdir,
        labctl_bin=labctl_bin,
        run_dir=run_dir,
        job_id_expr=SLURM_ARRAY_ELEMENT_ID_EXPR if array else SLURM_JOB_ID_EXPR,
        sweep_index_expr=SLURM_ARRAY_INDEX_EXPR if array else None,
        sweep_arg=sweep_arg,
    )
    return SHEBANG + render_sbatch_header(job, resources=resources, slurm=slurm) + body


def render_sbatch_header(job: JobSpec, *, resources: Resources, slurm: SlurmSettings) -> str:
    """The ``#SBATCH`` lines (no shebang).

    Without ``resources.components`` the job is one block made from
    ``resources``. With components, they are the blocks of a heterogeneous
    job, separated by ``#SBATCH hetjob``; the body runs on component 0.
    A component's partition / qos / account / exclude list falls back to the
    recipe's ``[resources]``, then to the cluster's ``[slurm]``. Job-wide
    options (name, log, array, dependency) sit in the first block; the time
    limit is repeated in every block.
    """
    time_limit = format_time_limit(parse_time_seconds(resources.time))
    job_wide = [
        f"--job-name={_one_line(job.job_name)}",
        f"--output={_one_line(str(job.log_path))}",
        f"--error={_one_line(str(job.log_path))}",
    ]
    if job.array is not None:
        if resources.components:
            raise ValueError("a heterogeneous job cannot be a job array (SLURM refuses it)")
        job_wide.append(f"--array={_one_line(job.array)}")
    if job.after_ok:
        job_wide.append("--dependency=afterok:" + ":".join(_one_line(str(i)) for i in job.after_ok))

    blocks: list[Resources | Component] = [*resources.components] or [resources]
    lines: list[str] = []
    for index, block in enumerate(blocks):
        if index > 0:
            lines.append("hetjob")
        else:
            lines += job_wide
        lines.append(f"--time={time_limit}")
        lines += _block_options(block, resources, slurm)
    return "".join(f"#SBATCH {line}\n" for line in lines)


def _block_options(block: Resources | Component, resources: Resources, slurm: SlurmSettings) -> list[str]:
    options = [f"--cpus-per-task={block.cpus}", f"--mem={parse_mem_mb(block.mem)}"]
    if block.gpus > 0:
        options.append("--gres=" + slurm.gres_gpu_syntax.format(n=block.gpus))
    # recipe (component, then [resources]) wins over the cluster's [slurm]
    for flag in ("partition", "qos", "account"):
        value = getattr(block, flag) or getattr(resources, flag) or getattr(slurm, flag, None)
        if value:
            options.append(f"--{flag}={_one_line(value)}")
    if block.nodes is not None:
        options.append(f"--nodes={_one_line(str(block.nodes))}")
    exclude = block.exclude_nodes or resources.exclude_nodes
    if exclude:
        options.append("--exclude=" + ",".join(_one_line(n) for n in exclude))
    options += [_one_line(extra) for extra in block.sbatch_extra]
    return options


def render_script_body(
    *,
    env: Mapping[str, str],
    command: Sequence[str],
    workdir: Path,
    labctl_bin: str | None,
    run_dir: Path,
    job_id_expr: str | None = None,
    sweep_index_expr: str | None = None,
    sweep_arg: str | None = None,
) -> str:
    """The bash body shared by every executor (no shebang, no ``#SBATCH`` lines).

    ``env`` values are exported literally (shell-quoted). ``job_id_expr`` and
    ``sweep_index_expr`` are shell expressions (e.g. ``${SLURM_JOB_ID}``) for
    ``LABCTL_JOB_ID`` and ``LABCTL_SWEEP_INDEX``; None leaves them out (the
    local executor sets them in the environment). With ``sweep_arg``, the
    command gets ``--<sweep_arg>=$LABCTL_SWEEP_INDEX`` appended, since the
    swept value is only known on the node.
    """
    if not command:
        raise ValueError("the command is empty")
    lines = ["set -uo pipefail"]
    secrets = shlex.quote(str(run_dir / SECRETS_FILE))
    lines.append(f"if [ -r {secrets} ]; then . {secrets}; fi")  # values kept out of the log and this script
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        reference = REFERENCE.match(value)
        # a ${VAR} reference resolves now, at job start (set -u: an unset one stops the job with its name)
        lines.append(
            f'export {name}="${{{reference.group(1)}}}"' if reference else f"export {name}={shlex.quote(value)}"
        )
    if sweep_index_expr is not None:
        lines.append(f"export LABCTL_SWEEP_INDEX={sweep_index_expr}")
    if job_id_expr is not None:
        lines.append(f"export LABCTL_JOB_ID={job_id_expr}")
    quoted_dir = shlex.quote(str(workdir))
    lines.append(f'cd {quoted_dir} || {{ echo "labctl: cannot enter "{quoted_dir} >&2; exit 1; }}')
    user_command = shlex.join(command)
    if sweep_arg is not None:
        if sweep_index_expr is None:
            raise ValueError("sweep_arg needs sweep_index_expr (the swept value comes from the array index)")
        user_command += f' {shlex.quote("--" + sweep_arg + "=")}"${{LABCTL_SWEEP_INDEX}}"'
    lines.append(user_command)
    lines.append("rc=$?")
    if labctl_bin is not None:  # None: whoever registers the outputs hashes them (the local agent)
        hash_outputs = shlex.join([labctl_bin, "hash-outputs", "--run-dir", str(run_dir)])
        lines.append(f"if [ $rc -eq 0 ]; then {hash_outputs} || true; fi")
    lines.append("exit $rc")
    return "\n".join(lines) + "\n"


def format_time_limit(seconds: int) -> str:
    """``D-HH:MM:SS`` as sbatch ``--time`` takes it (SLURM rounds seconds up to whole minutes)."""
    if seconds <= 0:
        raise ValueError(f"time limit must be more than zero, not {seconds} s")
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"


def _one_line(value: str) -> str:
    # a newline would end the #SBATCH line and smuggle the rest into the script
    if "\n" in value or "\r" in value:
        raise ValueError(f"{value!r}: #SBATCH values must be one line")
    return value
