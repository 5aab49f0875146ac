"""The SLURM executor: sbatch, sacct, squeue and scancel, batched, and nothing else.

Facts this module relies on (checked on SLURM 22.05 with slurmdbd):

- ``sacct -j 123`` returns every element of array 123 (``123_0``, ...,
  a still-pending range ``123_[2-9%2]`` whose JobIDRaw is 123) and every
  component of heterogeneous job 123 (``123+0``, ``123+1``); JobIDRaw of an
  element or component is a different number, so rows are matched by JobID.
- Accounting lags submission by a second or more: a fresh job can be absent
  from sacct while squeue lists it. Absent ids get one squeue call; an id
  neither knows is left out, never reported finished.
- With slurmdbd down, sacct exits 1 with ``sacct: error: Problem talking to
  the database: Connection refused``; sbatch, squeue and scancel keep
  working (they talk to slurmctld). We then ask squeue only, report no
  terminal state, and set ``accounting_ok`` False.
- ``squeue -j`` exits 1 with ``slurm_load_jobs error: Invalid job id
  specified`` when none of the ids is still known to slurmctld (finished
  jobs leave squeue after MinJobAge); that is an empty answer, not a failure.
- Array elements reach accounting late and in bursts: after the last
  element finished, sacct showed only ``123_3 COMPLETED`` (the master row)
  for ~4 s before the rows of elements 0-2 (one of them FAILED) appeared.
  Aggregating the rows sacct happens to return would report a false
  ``succeeded``; so an array's expected indices (remembered at submit, or
  passed as ``arrays=``) are filled in as submitted until their rows arrive.
- Right after slurmdbd comes back, a job can show ``COMPLETED`` with End
  ``Unknown`` for a few seconds (DEVELOPERS.md); such a row is reported as
  still running until the record is complete.
- sacct's default window starts at midnight, so ``--starttime`` is always given.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from labctl.executors.base import ACTIVE_STATES, JobSpec, JobState
from labctl.executors.errors import ExecutorError
from labctl.secrets import job_inherited_environ

if TYPE_CHECKING:
    from labctl.files.cluster import Scheduler

SACCT_FIELDS = "JobIDRaw,JobID,JobName,State,ExitCode,Start,End"
#: ids per sacct / squeue call; 5,000 ids keep the command line near 40 kB
MAX_IDS_PER_CALL = 5000

#: SLURM job state (first word) -> labctl run state; see LABCTL-FORMATS.md, "Run states"
RUN_STATE_OF_SLURM = {
    "PENDING": "submitted",
    "CONFIGURING": "submitted",
    "SUSPENDED": "submitted",
    "REQUEUED": "submitted",
    "REQUEUE_HOLD": "submitted",
    "REQUEUE_FED": "submitted",
    "RESV_DEL_HOLD": "submitted",
    "RUNNING": "running",
    "COMPLETING": "running",
    "RESIZING": "running",
    "SIGNALING": "running",
    "STAGE_OUT": "running",
    "STOPPED": "running",  # SIGSTOPped, still holding its nodes
    "COMPLETED": "succeeded",
    "CANCELLED": "cancelled",
    "TIMEOUT": "timeout",
    "OUT_OF_MEMORY": "oom",
    "FAILED": "failed",
    "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
    "SPECIAL_EXIT": "failed",
    # a preempted job that was not requeued is over; the cause goes in `reason`
    "PREEMPTED": "failed",
    "NODE_FAIL": "node_fail",
}
_REASON_OF_SLURM = {"PREEMPTED": "preempted", "BOOT_FAIL": "boot_fail", "DEADLINE": "deadline"}
#: which outcome an aggregate (array, heterogeneous job) reports when its rows differ
_FAILURE_ORDER = ("oom", "timeout", "node_fail", "failed", "unknown_terminal", "cancelled")
_JOB_ID = re.compile(r"^(\d+)(?:_(\d+|\[[^\]]*\])|\+(\d+))?$")


class SlurmExecutor:
    """Submit, poll many and cancel many SLURM jobs with one command call each.

    ``sacct_calls`` counts sacct invocations (a reconcile cycle should make
    one); ``accounting_ok`` says whether the last sacct call worked.
    """

    name = "slurm"

    def __init__(
        self,
        *,
        bin_dir: str | os.PathLike[str] | None = None,
        min_interval: float = 1.0,
        max_interval: float = 30.0,
        accounting_down_interval: float = 60.0,
        default_lookback: timedelta = timedelta(days=30),
        starttime_margin: timedelta = timedelta(minutes=10),
        timeout: float = 60.0,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir else None
        # the cluster's [scheduler] sbatch/sacct/scancel/squeue: names on PATH or absolute paths
        self.commands: dict[str, str] = {}
        if scheduler is not None:
            self.commands = {
                "sbatch": scheduler.sbatch,
                "sacct": scheduler.sacct,
                "scancel": scheduler.scancel,
                "squeue": scheduler.squeue,
            }
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.accounting_down_interval = accounting_down_interval
        self.default_lookback = default_lookback
        self.starttime_margin = starttime_margin
        self.timeout = timeout
        self.sacct_calls = 0
        self.squeue_calls = 0
        self.accounting_ok = True
        self.last_accounting_error: str | None = None
        self._interval = min_interval
        self._submitted_at: dict[str, datetime] = {}
        self._array_indices: dict[str, list[int]] = {}

    # ---- submit / cancel

    def submit(self, job: JobSpec) -> str:
        """``sbatch --parsable`` the job's script; returns the job id (``123``)."""
        before = datetime.now().astimezone()
        result = self._run("sbatch", ["--parsable", str(job.script)], cwd=job.run_dir)
        if result.returncode != 0:
            raise ExecutorError(f"sbatch refused {job.script} (exit {result.returncode}): {_words(result)}")
        job_id = parse_sbatch_output(result.stdout)
        self._submitted_at[job_id] = before
        if job.array is not None:
            self._array_indices[job_id] = expand_array_spec(job.array)
        return job_id

    def cancel(self, job_ids: Sequence[str]) -> None:
        """One ``scancel`` for all ids (more only past MAX_IDS_PER_CALL); unknown or finished ids are fine."""
        for chunk in _chunks(_unique(job_ids)):
            result = self._run("scancel", chunk)
            if result.returncode != 0:
                raise ExecutorError(f"scancel failed (exit {result.returncode}): {_words(result)}")

    # ---- poll

    def poll(
        self,
        job_ids: Sequence[str],
        *,
        since: datetime | None = None,
        arrays: Mapping[str, str] | None = None,
    ) -> dict[str, JobState]:
        """The state of every id in one sacct call; ids nobody knows yet are left out.

        ``since`` bounds sacct's window and ``arrays`` gives the ``--array``
        spec of array jobs (job id -> ``"0-9%2"``); both are needed only for
        jobs this executor did not submit itself (e.g. after a restart). An
        array or a heterogeneous job is one aggregated state: any failure
        wins, then running, then submitted, then succeeded; ``reason`` counts
        the rows, so a failed array whose other elements still run says so.
        """
        rows = self._rows_by_requested_id(job_ids, since, arrays)
        return {job_id: aggregate(job_id, states) for job_id, states in rows.items() if states}

    def poll_arrays(
        self,
        job_ids: Sequence[str],
        *,
        since: datetime | None = None,
        arrays: Mapping[str, str] | None = None,
    ) -> dict[str, dict[int, JobState]]:
        """Per-element states of many arrays (one sacct call), keyed by task index.

        A still-pending range like ``123_[5-9%2]`` expands to 5..9, each
        submitted; so does an expected index accounting has no row for yet.
        """
        rows = self._rows_by_requested_id(job_ids, since, arrays)
        return {job_id: elements(states) for job_id, states in rows.items() if states}

    def poll_runs(
        self, job_ids: Sequence[str], *, since: datetime | None = None, arrays: Mapping[str, str] | None = None
    ) -> dict[str, JobState]:
        """One sacct call for plain jobs and array elements alike: ids like ``123`` get one
        aggregated state, ids like ``123_4`` their element's state (as labctl records one run
        per array element)."""
        bases = _unique(base_job_id(j) if "_" in j else j for j in job_ids)
        rows = self._rows_by_requested_id(bases, since, arrays)
        states: dict[str, JobState] = {}
        for job_id in job_ids:
            if "_" in job_id:
                base, _, index = job_id.partition("_")
                found = elements(rows.get(base, [])).get(int(index))
                if found is not None:
                    states[job_id] = found
            elif rows.get(job_id):
                states[job_id] = aggregate(job_id, rows[job_id])
        return states

    def poll_array(self, job_id: str, *, since: datetime | None = None, spec: str | None = None) -> dict[int, JobState]:
        arrays = {job_id: spec} if spec is not None else None
        return self.poll_arrays([job_id], since=since, arrays=arrays).get(job_id, {})

    def next_interval(self, changed: bool) -> float:
        """Seconds until the next poll: ``min_interval`` right after a change,
        doubling to ``max_interval`` while idle, and at least
        ``accounting_down_interval`` while sacct fails."""
        if changed:
            self._interval = self.min_interval
        else:
            self._interval = min(self._interval * 2, self.max_interval)
        if not self.accounting_ok:
            return max(self._interval, self.accounting_down_interval)
        return self._interval

    # ---- recovery

    def find_by_comment(self, keys: Mapping[str, str], *, since: datetime | None = None) -> dict[str, str]:
        """Job ids by the key (run or sweep id) a job carries, for jobs submitted before a crash kept
        their ids from being recorded; ``keys`` maps each key to the job's SLURM name.

        A job carries its key as ``--comment`` (which squeue shows; sacct only
        when the cluster stores job comments) and as the last part of its
        working directory (sbatch runs in the run dir; sacct always keeps it);
        jobs of older labctl versions are named ``labctl-<key>``. One squeue and
        one sacct call per 500 names, narrowed by name. When several jobs carry
        one key the newest (highest id) wins. sacct's name search skips jobs
        that never became eligible (held, then cancelled): squeue finds them
        only while slurmctld still holds them. A key missing from the answer
        means "not found" only if ``accounting_ok`` is True afterwards; with
        sacct down, a finished job that squeue has already purged is missing too.
        """
        wanted = set(keys)
        names = _unique([*keys.values(), *(f"labctl-{key}" for key in keys)])
        found: dict[str, str] = {}
        if not wanted:
            return found

        def note(job_id_field: str, name: str, comment: str, workdir: str) -> None:
            legacy = name.removeprefix("labctl-") if name.startswith("labctl-") else None
            base = base_job_id(job_id_field)
            for key in {comment, Path(workdir).name if workdir else "", legacy or ""} & wanted:
                if key not in found or int(base) > int(found[key]):
                    found[key] = base

        accounting_answered = True
        for chunk in _chunks(names, size=500):
            # -t all: also jobs that ended less than MinJobAge ago, which accounting may not have yet
            result = self._run("squeue", ["-h", "-t", "all", "-o", "%i|%j|%k|%Z", "--name=" + ",".join(chunk)])
            self.squeue_calls += 1
            if result.returncode == 0:
                for line in result.stdout.splitlines():
                    fields = line.split("|", 3)
                    if len(fields) == 4 and fields[0]:
                        note(*fields)
            self.sacct_calls += 1
            starttime = self._starttime([], since)
            args = ["-X", "-n", "-P", "--name=" + ",".join(chunk), "--starttime", starttime]
            result = self._run("sacct", [*args, "-o", "JobID,JobName,Comment,WorkDir"])
            if result.returncode == 0:
                for line in result.stdout.splitlines():
                    fields = line.split("|", 3)
                    if len(fields) == 4 and fields[0]:
                        note(*fields)
            else:
                accounting_answered = False
                self._accounting_failed(result)
        if accounting_answered:
            # callers read accounting_ok to tell "no such job" from "accounting could not say"
            self.accounting_ok = True
            self.last_accounting_error = None
        return found

    def queue_of(self, user: str) -> list[QueueRow]:
        """The user's pending and running jobs as squeue lists them: id, name, state, reason (one call)."""
        result = self._run("squeue", ["-u", user, "-h", "-o", "%i|%j|%T|%r", "--states=PENDING,RUNNING"])
        self.squeue_calls += 1
        if result.returncode != 0:
            raise ExecutorError(f"squeue failed (exit {result.returncode}): {_words(result)}")
        rows = []
        for line in result.stdout.splitlines():
            fields = line.split("|", 3)
            if len(fields) == 4:
                rows.append(QueueRow(*(f.strip() for f in fields)))
        return rows

    def hold(self, job_ids: Sequence[str]) -> None:
        """``scontrol uhold``: a pending job stays pending, reason JobHeldUser, until released (``hold``
        run by an administrator, root included, would be JobHeldAdmin, which the throttle does not count
        as its own)."""
        self._scontrol("uhold", job_ids)

    def release(self, job_ids: Sequence[str]) -> None:
        """``scontrol release``: held jobs become eligible again."""
        self._scontrol("release", job_ids)

    def _scontrol(self, verb: str, job_ids: Sequence[str]) -> None:
        for chunk in _chunks(_unique(job_ids)):
            result = self._run("scontrol", [verb, ",".join(chunk)])
            if result.returncode != 0:
                raise ExecutorError(f"scontrol {verb} failed (exit {result.returncode}): {_words(result)}")

    def accounting_backlog(self) -> int | None:
        """Job records slurmctld still holds for slurmdbd (sdiag's ``DBD Agent queue size``); None if unknown.

        While slurmdbd was down slurmctld queues them; after it comes back sacct
        answers at once but without those jobs until the queue drains (observed
        ~6 s with 4 records), so an empty ``sacct --name`` proves nothing then.
        """
        result = self._run("sdiag", [])
        found = re.search(r"^DBD Agent queue size:\s*(\d+)", result.stdout, re.MULTILINE)
        return int(found.group(1)) if result.returncode == 0 and found else None

    # ---- internals

    def _rows_by_requested_id(
        self, job_ids: Sequence[str], since: datetime | None, arrays: Mapping[str, str] | None
    ) -> dict[str, list[_Row]]:
        wanted = _unique(job_ids)
        rows: dict[str, list[_Row]] = {job_id: [] for job_id in wanted}
        if not wanted:
            return rows
        missing: list[str] = []
        for chunk in _chunks(wanted):
            answered = self._sacct(chunk, since)
            if answered is None:
                missing += chunk
                continue
            _assign(rows, answered)
            missing += [job_id for job_id in chunk if not rows[job_id]]
        if missing:
            # sacct lags submission (or is down): ask slurmctld whether these are alive
            for chunk in _chunks(missing):
                _assign(rows, self._squeue(chunk))
        for job_id, found in rows.items():
            expected = self._expected_indices(job_id, arrays)
            if found and expected:
                seen = {index for row in found for index in array_indices(row.job_id)}
                found += [_not_yet_accounted(job_id, i) for i in expected if i not in seen]
        return rows

    def _expected_indices(self, job_id: str, arrays: Mapping[str, str] | None) -> list[int]:
        if arrays and job_id in arrays:
            return expand_array_spec(arrays[job_id])
        return self._array_indices.get(job_id, [])

    def _sacct(self, job_ids: list[str], since: datetime | None) -> list[_Row] | None:
        self.sacct_calls += 1
        args = ["-X", "-n", "-P", "--starttime", self._starttime(job_ids, since)]
        args += ["-j", ",".join(job_ids), "-o", SACCT_FIELDS]
        result = self._run("sacct", args)
        if result.returncode != 0:
            self._accounting_failed(result)
            return None
        self.accounting_ok = True
        self.last_accounting_error = None
        return [row for line in result.stdout.splitlines() if (row := parse_sacct_line(line)) is not None]

    def _squeue(self, job_ids: list[str]) -> list[_Row]:
        self.squeue_calls += 1
        result = self._run("squeue", ["-h", "-o", "%i|%T|%j", "-j", ",".join(job_ids)])
        if result.returncode != 0:
            # also the answer when none of the ids is known any more (see the module docstring)
            return []
        rows = []
        reason = None if self.accounting_ok else "accounting unavailable; state from squeue"
        for line in result.stdout.splitlines():
            job_id_field, _, rest = line.partition("|")
            slurm_state, _, name = rest.partition("|")
            row = _Row(job_id_field, name, slurm_state, "", "", "", reason_override=reason)
            # squeue knows no exit code or times: a finished job waits for accounting's full record
            if _JOB_ID.match(job_id_field) and row.state in ACTIVE_STATES:
                rows.append(row)
        return rows

    def _accounting_failed(self, result: subprocess.CompletedProcess[str]) -> None:
        self.accounting_ok = False
        self.last_accounting_error = f"sacct exit {result.returncode}: {_words(result)}"

    def _starttime(self, job_ids: Iterable[str], since: datetime | None) -> str:
        if since is None:
            known = [self._submitted_at.get(base_job_id(j)) for j in job_ids]
            if known and all(k is not None for k in known):
                since = min(k for k in known if k is not None)
            else:
                since = datetime.now().astimezone() - self.default_lookback
        start = since - self.starttime_margin
        # sacct reads times in the cluster's local time zone
        return start.astimezone().strftime("%Y-%m-%dT%H:%M:%S")

    def _command(self, name: str) -> str:
        if self.bin_dir:  # fault injection in tests replaces every SLURM command
            return str(self.bin_dir / name)
        return self.commands.get(name, name)

    def _run(self, name: str, args: list[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        argv = [self._command(name), *args]
        try:
            return subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                cwd=cwd if cwd is not None and cwd.is_dir() else None,
                check=False,
                env=job_inherited_environ(),  # sbatch exports it to the job: no labctl credentials
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", f"{name} gave no answer within {self.timeout:g} s")
        except FileNotFoundError:
            return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]} not found; is SLURM installed here?")


class QueueRow(NamedTuple):
    """One job as ``squeue -o %i|%j|%T|%r`` shows it."""

    job_id: str
    name: str
    state: str  # PENDING, RUNNING
    reason: str  # JobHeldUser for a job held by its user


class _Row:
    """One row of sacct (or squeue) output, already in labctl's terms."""

    __slots__ = ("end", "exit_code", "job_id", "name", "reason", "signal", "start", "state")

    def __init__(
        self,
        job_id: str,
        name: str,
        slurm_state: str,
        exit_code: str,
        start: str,
        end: str,
        *,
        reason_override: str | None = None,
    ) -> None:
        self.job_id = job_id
        self.name = name
        self.state, reason = run_state_of(slurm_state)
        self.reason = reason_override or reason
        if self.state not in ACTIVE_STATES and end in ("Unknown", "None") and start not in ("", "Unknown", "None"):
            # slurmdbd catching up sends a terminal State before End: not the full record yet
            self.state, self.reason = "running", f"accounting incomplete ({slurm_state}, no End yet)"
        terminal = self.state not in ACTIVE_STATES
        self.exit_code, self.signal = parse_exit_code(exit_code) if terminal else (None, None)
        self.start = parse_sacct_time(start)
        self.end = parse_sacct_time(end) if terminal else None

    def to_state(self, job_id: str) -> JobState:
        return JobState(
            job_id=job_id,
            state=self.state,
            exit_code=self.exit_code,
            signal=self.signal,
            started_at=self.start,
            finished_at=self.end,
            reason=self.reason,
        )


# ---- parsing (pure)


def parse_sbatch_output(stdout: str) -> str:
    """The job id in ``sbatch --parsable`` output: ``123`` or ``123;cluster``."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    job_id = lines[-1].split(";", 1)[0] if lines else ""
    if not job_id.isdigit():
        raise ExecutorError(f"sbatch printed {stdout.strip()!r}; expected a job id like 123 or 123;cluster")
    return job_id


def parse_sacct_line(line: str) -> _Row | None:
    """A ``JobIDRaw|JobID|JobName|State|ExitCode|Start|End`` line, or None for a line that is not one."""
    parts = line.split("|")
    if len(parts) != 7 or not _JOB_ID.match(parts[1]):
        return None
    _raw, job_id, name, slurm_state, exit_code, start, end = parts
    return _Row(job_id, name, slurm_state, exit_code, start, end)


def run_state_of(slurm_state: str) -> tuple[str, str | None]:
    """labctl run state and reason for a SLURM state as sacct/squeue print it (``CANCELLED by 0``)."""
    word = slurm_state.split(" ", 1)[0].rstrip("+").upper()
    state = RUN_STATE_OF_SLURM.get(word)
    if state is None:
        return "unknown_terminal", f"SLURM state {slurm_state!r}"
    return state, _REASON_OF_SLURM.get(word)


def parse_exit_code(value: str) -> tuple[int | None, int | None]:
    """``3:0`` -> (3, None); ``0:9`` (killed by signal 9) -> (0, 9)."""
    code, _, signal = value.partition(":")
    try:
        exit_code = int(code)
    except ValueError:
        return None, None
    try:
        sig = int(signal) if signal else 0
    except ValueError:
        sig = 0
    return exit_code, sig or None


def parse_sacct_time(value: str) -> datetime | None:
    """sacct's local ``2026-11-26T06:15:16`` as an aware datetime; ``Unknown``/``None``/empty -> None."""
    if not value or value in ("Unknown", "None"):
        return None
    try:
        return datetime.fromisoformat(value).astimezone()
    except ValueError:
        return None


def base_job_id(job_id_field: str) -> str:
    """``123`` for ``123``, ``123_4``, ``123_[5-9%2]``, ``123+1`` and ``123;cluster``."""
    job_id_field = job_id_field.split(";", 1)[0]
    match = _JOB_ID.match(job_id_field)
    return match.group(1) if match else job_id_field


def array_indices(job_id_field: str) -> list[int]:
    """Task indices a JobID names: ``123_4`` -> [4]; ``123_[5-9%2]`` -> 5..9; ``123_[1,3-4]`` -> [1, 3, 4]."""
    match = _JOB_ID.match(job_id_field)
    if not match or match.group(2) is None:
        return []
    return expand_array_spec(match.group(2).strip("[]"))


def expand_array_spec(spec: str) -> list[int]:
    """Indices of an ``--array`` spec: ``0-9%2``, ``1,3-5``, ``0-6:3``, ``7``."""
    indices: list[int] = []
    for part in spec.split("%", 1)[0].split(","):
        low, _, high = part.partition("-")
        step = 1
        if ":" in high:
            high, step_text = high.split(":", 1)
            step = int(step_text)
        if low.isdigit():
            indices += range(int(low), int(high or low) + 1, step)
    return indices


def aggregate(job_id: str, rows: Sequence[_Row]) -> JobState:
    """One state for a job's rows (array elements, heterogeneous components, or just one row)."""
    if len(rows) == 1:
        return rows[0].to_state(job_id)
    by_state: dict[str, list[_Row]] = {}
    for row in rows:
        by_state.setdefault(row.state, []).append(row)
    for state in (*_FAILURE_ORDER, "running", "submitted", "succeeded"):
        if state in by_state:
            winner = by_state[state][0]
            break
    counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_state.items()))
    starts = [r.start for r in rows if r.start is not None]
    terminal = winner.state not in ACTIVE_STATES
    ends = [r.end for r in rows if r.end is not None]
    return JobState(
        job_id=job_id,
        state=winner.state,
        exit_code=winner.exit_code,
        signal=winner.signal,
        started_at=min(starts) if starts else None,
        finished_at=max(ends) if terminal and ends else None,
        reason="; ".join(filter(None, [winner.reason, f"rows: {counts}"])),
    )


def elements(rows: Sequence[_Row]) -> dict[int, JobState]:
    states: dict[int, JobState] = {}
    for row in rows:
        for index in array_indices(row.job_id):
            states[index] = row.to_state(f"{base_job_id(row.job_id)}_{index}")
    return dict(sorted(states.items()))


def _not_yet_accounted(job_id: str, index: int) -> _Row:
    return _Row(f"{job_id}_{index}", "", "PENDING", "", "", "", reason_override="not yet in accounting")


def _assign(rows: Mapping[str, list[_Row]], answered: Iterable[_Row]) -> None:
    """File each row under the id that was asked for: the row's own JobID, else its array/het job's."""
    for row in answered:
        if row.job_id in rows:
            rows[row.job_id].append(row)
        elif (base := base_job_id(row.job_id)) in rows:
            rows[base].append(row)


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(str(v).split(";", 1)[0] for v in values))


def _chunks(values: list[str], size: int = MAX_IDS_PER_CALL) -> list[list[str]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


def _words(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stderr or result.stdout).strip() or "no output"
