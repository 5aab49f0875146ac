"""The job script `.lab/submit.sh`: `#SBATCH` header (SLURM only) and the bash body every executor runs.

The body exports the run's environment, runs the user's command in the
working directory, hashes outputs on the compute node after exit 0, and exits
with the user's exit code. The local executor writes the same body behind
``SHEBANG`` without the header and without the hashing (its agent hashes the
outputs): there nothing follows the command, so bash ``exec``s it.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from labctl.executors.base import DirectExec, JobSpec
from labctl.files.cluster import SlurmSettings
from labctl.files.recipe import Component, Resources
from labctl.files.units import parse_mem_mb, parse_time_seconds
from labctl.realpath import realpath
from labctl.secrets import REFERENCE, SECRETS_FILE

SHEBANG = "#!/bin/bash\n"
#: in an array element, the id sacct and squeue show for it (``123_4``), not the element's raw id
SLURM_JOB_ID_EXPR = "${SLURM_JOB_ID}"
SLURM_ARRAY_ELEMENT_ID_EXPR = "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
SLURM_ARRAY_INDEX_EXPR = "${SLURM_ARRAY_TASK_ID}"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SBATCH_PREFIX = re.compile(r"^#\s*SBATCH\b", re.I)
#: ``NAME=value`` as the first word: bash takes it as an assignment for the command after it, not as a program
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
#: bash's builtins and reserved words (``compgen -b``, ``compgen -k``): a command starting with one runs in
#: the script's bash, never ``exec``ed (``exec source x`` fails; ``exec echo`` would run /bin/echo instead)
SHELL_WORDS = frozenset(
    (  # noqa: SIM905 (one word list, as compgen prints it, reads better than 85 quoted lines)
        ". : [ alias bg bind break builtin caller cd command compgen complete compopt continue declare dirs disown "
        "echo enable eval exec exit export false fc fg getopts hash help history jobs kill let local logout mapfile "
        "popd printf pushd pwd read readarray readonly return set shift shopt source suspend test times trap true "
        "type typeset ulimit umask unalias unset wait "
        "if then else elif fi case esac for select while until do done in function time { } ! [[ ]] coproc"
    ).split()
)
#: variables that change what bash does before its ``exec`` or what it passes on (a startup file, its options,
#: its level, its dirs): with one of them set, the local job script runs in bash (``local_direct_exec``)
SHELL_STATE = frozenset(
    {"BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "POSIXLY_CORRECT", "SHLVL", "PWD", "OLDPWD", "CDPATH", "PS4"}
)


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
    modules: Sequence[str] = (),
) -> str:
    """The whole `.lab/submit.sh` for sbatch: header, then the shared body."""
    array = job.array is not None
    body = render_script_body(
        env=env,
        modules=modules,
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
    """The ``#SBATCH`` lines (no shebang), in the original labctl's order and meaning.

    ``[resources]`` is component 0 and carries the job-wide options (name,
    comment, account, qos, time, log, array, dependency); each
    ``[[resources.components]]`` follows after a ``#SBATCH hetjob`` line with
    its own nodes (default 1), cpus, memory, partition (else the cluster's),
    GPUs and extra flags. The script body runs on component 0.
    """
    lines = [f"--job-name={_one_line(job.job_name)}"]
    if job.comment is not None:
        lines.append(f"--comment={_one_line(job.comment)}")
    # the recipe wins over the cluster's [slurm]
    for flag in ("account", "partition", "qos"):
        value = getattr(resources, flag) or getattr(slurm, flag)
        if value:
            lines.append(f"--{flag}={_one_line(value)}")
    if resources.nodes is not None:
        lines.append(f"--nodes={_one_line(str(resources.nodes))}")
    if resources.exclude_nodes:
        lines.append("--exclude=" + ",".join(_one_line(n) for n in resources.exclude_nodes))
    if resources.gpus > 0:
        lines.append("--gres=" + slurm.gres_gpu_syntax.format(n=resources.gpus))
    if job.after_ok:
        lines.append("--dependency=afterok:" + ":".join(_one_line(str(i)) for i in job.after_ok))
        lines.append("--kill-on-invalid-dep=yes")
    lines.append(f"--cpus-per-task={resources.cpus}")
    lines.append(f"--mem={format_mem(resources.mem)}")
    lines.append(f"--time={format_time_limit(parse_time_seconds(resources.time))}")
    lines.append(f"--output={_one_line(str(job.log_path))}")
    lines.append(f"--error={_one_line(str(job.log_path))}")
    if job.array is not None:
        if resources.components:
            raise ValueError("a heterogeneous job cannot be a job array (SLURM refuses it)")
        lines.append(f"--array={_one_line(job.array)}")
    lines += sbatch_extra_flags(resources.sbatch_extra, "resources.sbatch_extra")
    for index, component in enumerate(resources.components):
        lines += ["hetjob", *_component_options(component, slurm, index)]
    return "".join(f"#SBATCH {line}\n" for line in lines)


def _component_options(component: Component, slurm: SlurmSettings, index: int) -> list[str]:
    """One ``[[resources.components]]`` block; time, account, qos and the log stay job-wide (component 0)."""
    options = [
        f"--nodes={_one_line(str(component.nodes if component.nodes is not None else 1))}",
        f"--cpus-per-task={component.cpus}",
        f"--mem={format_mem(component.mem)}",
    ]
    partition = component.partition or slurm.partition
    if partition:
        options.append(f"--partition={_one_line(partition)}")
    if component.gpus > 0:
        options.append("--gres=" + slurm.gres_gpu_syntax.format(n=component.gpus))
    # ours only: SLURM also takes these per component; the original has no such keys, so nothing is inherited
    for flag in ("qos", "account"):
        value = getattr(component, flag)
        if value:
            options.append(f"--{flag}={_one_line(value)}")
    if component.exclude_nodes:
        options.append("--exclude=" + ",".join(_one_line(n) for n in component.exclude_nodes))
    return options + sbatch_extra_flags(component.sbatch_extra, f"resources.components[{index}].sbatch_extra")


def sbatch_extra_flags(entries: Sequence[str], where: str) -> list[str]:
    """``sbatch_extra`` entries as bare flags: blank entries dropped, a leading ``#SBATCH`` taken off.

    The original labctl refuses a ``#SBATCH``-prefixed entry; the intent is
    plain, so it is normalised here instead of becoming ``#SBATCH #SBATCH``.
    Any other ``#`` (a comment) is refused: it would not be a flag at all.
    """
    flags = []
    for entry in entries:
        flag = _SBATCH_PREFIX.sub("", entry.strip(), count=1).strip()
        if not flag:
            continue
        if flag.startswith("#"):
            raise ValueError(f'{where}: {entry!r} is not an sbatch flag; expected e.g. "--mail-type=END"')
        flags.append(_one_line(flag))
    return flags


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
    modules: Sequence[str] = (),
) -> str:
    """The bash body shared by every executor (no shebang, no ``#SBATCH`` lines).

    ``modules`` (the cluster's ``modules = [...]``) become ``module load``
    lines before anything else, as the original labctl writes them.

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
    lines += [f"module load {shlex.quote(module)}" for module in modules]
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
    if labctl_bin is None and command[0] not in SHELL_WORDS and not _ASSIGNMENT.match(command[0]):
        # Nothing follows the command (whoever registers the outputs hashes them: the local agent), so bash
        # replaces itself with it: one process fewer per job, and the job's pid, session and exit status
        # (a signal's, too) are the command's own.
        lines.append(f"exec {user_command}")
        return "\n".join(lines) + "\n"
    lines.append(user_command)
    lines.append("rc=$?")
    if labctl_bin is not None:  # None: whoever registers the outputs hashes them (the local agent)
        hash_outputs = shlex.join([labctl_bin, "hash-outputs", "--run-dir", str(run_dir)])
        lines.append(f"if [ $rc -eq 0 ]; then {hash_outputs} || true; fi")
    lines.append("exit $rc")
    return "\n".join(lines) + "\n"


def local_direct_exec(
    *,
    env: Mapping[str, str],
    command: Sequence[str],
    workdir: Path,
    run_dir: Path,
    job_id: str,
    modules: Sequence[str] = (),
) -> DirectExec | None:
    """What the local body (``render_script_body`` with no ``labctl_bin``, run by bash in ``run_dir``) ends by
    ``exec``ing, and with which variables, when the lines before need no shell: no module to load, no
    secrets file to source, no ``${VAR}`` to resolve, no variable that bash itself reads. None: they do,
    or bash would not exec the command; the script's bash must run."""
    if (
        modules
        or command[0] in SHELL_WORDS
        or _ASSIGNMENT.match(command[0])
        or (run_dir / SECRETS_FILE).exists()
        or not workdir.is_absolute()
        or any(REFERENCE.match(value) for value in env.values())
        or not SHELL_STATE.isdisjoint(env)
    ):
        return None
    # bash starts in run_dir (its physical path: the agent's PWD is not it); ``cd`` makes PWD the logical path
    shell = {"LABCTL_JOB_ID": job_id, "OLDPWD": realpath(run_dir), "PWD": os.path.normpath(workdir)}
    return DirectExec(argv=tuple(command), env={**env, **shell}, cwd=workdir)


def format_mem(value: str) -> str:
    """``--mem`` in megabytes (``"32GB"`` -> ``32768``); ``0`` stays 0, SLURM's "all the node's memory"."""
    return str(parse_mem_mb(value))


def format_time_limit(seconds: int | None) -> str:
    """``D-HH:MM:SS`` as sbatch ``--time`` takes it (SLURM rounds seconds up to whole minutes);
    None is ``UNLIMITED``."""
    if seconds is None:
        return "UNLIMITED"
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
