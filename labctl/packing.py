"""What this machine has (cpus, memory, GPU ids) and which queued local jobs fit in what is free.

The capacity is the cluster config's ``[local]`` where it says so, else detected: the CPUs this
process may run on, MemTotal, and ``nvidia-smi -L``. The agent packs jobs by their ``[resources]``
against it; ``--slots`` only caps how many run at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from labctl.errors import InputError
from labctl.files import Local, Resources, parse_mem_mb


@dataclass(frozen=True)
class Need:
    cpus: int
    mem_mb: int
    gpus: int

    @classmethod
    def of(cls, resources: Resources) -> Need:
        return cls(cpus=max(resources.cpus, 0), mem_mb=parse_mem_mb(resources.mem), gpus=max(resources.gpus, 0))

    def __add__(self, other: Need) -> Need:
        return Need(self.cpus + other.cpus, self.mem_mb + other.mem_mb, self.gpus + other.gpus)


NOTHING = Need(0, 0, 0)


@dataclass(frozen=True)
class Grant:
    """What one job was given: its CPU ids (None: not pinned), its GPU ids, and its share of cpus and memory."""

    need: Need
    cpu_ids: tuple[int, ...] | None
    gpu_ids: tuple[str, ...]


@dataclass(frozen=True)
class Capacity:
    cpus: int
    mem_mb: int
    gpus: tuple[str, ...]
    #: CPU ids jobs can be pinned to; None when the declared cpus exceed those this process may use
    cpu_ids: tuple[int, ...] | None
    #: which of cpus, mem, gpus the cluster config's ``[local]`` declares (the others were detected)
    declared: frozenset[str] = frozenset()

    def refusal(self, need: Need) -> str | None:
        """Why a job needing ``need`` can never run here ("needs 9 GPUs; this machine has 4 (...)"), or None."""
        if need.gpus > len(self.gpus):
            return f"needs {need.gpus} GPUs; this machine has {len(self.gpus)} ({self._source('gpus')})"
        if need.cpus > self.cpus:
            return f"needs {need.cpus} CPUs; this machine has {self.cpus} ({self._source('cpus')})"
        if need.mem_mb > self.mem_mb:
            return f"needs {need.mem_mb} MB of memory; this machine has {self.mem_mb} MB ({self._source('mem')})"
        return None

    def _source(self, key: str) -> str:
        return f"cluster.toml [local] {key}" if key in self.declared else f"detected; declare [local] {key} to change"


def refuse_if_never_fits(local: Local, resources: Resources, who: str) -> None:
    """Raise InputError (exit 2, nothing recorded) for a local job this machine can never run: the agent
    would keep it queued forever. ``who`` names it in the message ("stage train", "recipe x")."""
    why = machine_capacity(local).refusal(Need.of(resources))
    if why is not None:
        raise InputError(f"{who} {why}")


@functools.cache  # checked at every local submission; the devices do not change under a running process
def detected_gpus() -> tuple[str, ...]:
    """GPU indices from ``nvidia-smi -L`` (``GPU 0: ...``); none when it is absent or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(m.group(1) for m in re.finditer(r"^GPU (\d+):", out, re.MULTILINE))


@functools.cache  # read at every local submission (each stage of a pipeline); the machine's memory does not change
def detected_mem_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 30  # unknown: do not limit by memory


def machine_capacity(local: Local) -> Capacity:
    usable = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()
    return _capacity(local.cpus, local.mem, tuple(local.gpus) if local.gpus is not None else None, usable)


@functools.lru_cache(maxsize=16)  # asked at every local submission, for the same declaration and CPUs each time
def _capacity(cpus: int | None, mem: str | None, gpus: tuple[str, ...] | None, usable: tuple[int, ...]) -> Capacity:
    """The capacity a ``[local]`` declaring ``cpus``, ``mem`` and ``gpus`` (None: detected) gives on ``usable``."""
    count = cpus or len(usable) or os.cpu_count() or 1
    return Capacity(
        cpus=count,
        mem_mb=parse_mem_mb(mem) if mem is not None else detected_mem_mb(),
        gpus=gpus if gpus is not None else detected_gpus(),
        # pin only to CPUs that exist: a declaration larger than the machine shares them instead
        cpu_ids=usable if usable and count <= len(usable) else None,
        declared=frozenset(k for k, v in (("cpus", cpus), ("mem", mem), ("gpus", gpus)) if v is not None),
    )


@dataclass
class Pool:
    """What is free now; ``take`` and ``give_back`` keep it true as jobs start and end."""

    capacity: Capacity
    cpus: int = 0
    mem_mb: int = 0
    cpu_ids: list[int] = field(default_factory=list)
    gpus: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cpus, self.mem_mb = self.capacity.cpus, self.capacity.mem_mb
        self.cpu_ids = list(self.capacity.cpu_ids or ())
        self.gpus = list(self.capacity.gpus)

    def copy(self) -> Pool:
        other = Pool(self.capacity)
        other.cpus, other.mem_mb, other.cpu_ids, other.gpus = (
            self.cpus,
            self.mem_mb,
            list(self.cpu_ids),
            list(self.gpus),
        )
        return other

    def fits(self, need: Need) -> bool:
        return need.cpus <= self.cpus and need.mem_mb <= self.mem_mb and need.gpus <= len(self.gpus)

    def fits_beside(self, used: Need, reserved: Need, need: Need) -> bool:
        """``used`` leaves room for ``reserved`` in every resource ``need`` takes some of
        (a job asking for no GPUs does not compete for the GPUs a reservation waits for)."""
        return (
            (not need.cpus or used.cpus + reserved.cpus <= self.cpus)
            and (not need.mem_mb or used.mem_mb + reserved.mem_mb <= self.mem_mb)
            and (not need.gpus or used.gpus + reserved.gpus <= len(self.gpus))
        )

    def take(self, need: Need) -> Grant:
        cpu_ids = None
        if self.capacity.cpu_ids is not None:
            cpu_ids, self.cpu_ids = tuple(self.cpu_ids[: need.cpus]), self.cpu_ids[need.cpus :]
        gpu_ids, self.gpus = tuple(self.gpus[: need.gpus]), self.gpus[need.gpus :]
        self.cpus -= need.cpus
        self.mem_mb -= need.mem_mb
        return Grant(need, cpu_ids, gpu_ids)

    def give_back(self, grant: Grant) -> None:
        self.cpus += grant.need.cpus
        self.mem_mb += grant.need.mem_mb
        self.cpu_ids = sorted([*self.cpu_ids, *(grant.cpu_ids or ())])
        order = {g: i for i, g in enumerate(self.capacity.gpus)}
        self.gpus = sorted([*self.gpus, *grant.gpu_ids], key=order.__getitem__)


def choose(pool: Pool, queued: Iterable[tuple[str, Need]], limit: int) -> list[str]:
    """Run ids to start now, oldest first, at most ``limit``.

    The oldest job that does not fit holds back what it needs: a younger job starts only if it
    fits in what remains after that reservation, so a stream of small jobs never starves a big one.
    A job that can never fit this machine reserves nothing and stays queued (every local submission
    refuses those; one queued earlier, or under another ``[local]``, can still be here).
    """
    chosen: list[str] = []
    planned = reserved = NOTHING
    for run_id, need in queued:
        if len(chosen) >= limit:
            break
        if pool.capacity.refusal(need) is not None:
            continue
        if pool.fits(planned + need) and pool.fits_beside(planned + need, reserved, need):
            planned += need
            chosen.append(run_id)
        elif reserved is NOTHING:
            reserved = need
    return chosen


def visible_devices(grant: Grant, capacity: Capacity) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` for the job: its GPU ids; empty (none visible) when it asked for none."""
    if not grant.gpu_ids and not capacity.gpus:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(grant.gpu_ids)}


@contextlib.contextmanager
def pinned(cpu_ids: Sequence[int] | None) -> Iterator[None]:
    """Processes started inside run on ``cpu_ids`` only (None or empty: wherever this process may).

    The calling thread is pinned to them meanwhile: on Linux a CPU affinity is a thread's own, and a process
    a thread starts inherits that thread's, so the job runs on its CPUs from its first instruction, without
    a ``taskset`` exec per job, and the agent's other threads stay where they were."""
    if not cpu_ids or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)  # 0: the calling thread
    os.sched_setaffinity(0, cpu_ids)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
