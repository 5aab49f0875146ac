"""The facts labctl records. Names are past tense; fields are what was known then.

Streams: ``run-<id>``, ``artifact-<id>``, ``alias-<user>/<name>``,
``cache-<key>``, ``pipeline-<id>``, ``sweep-<id>``, ``eval-<key>``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from events.codec import Event

# ------------------------------------------------------------------ values


class InputRef(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A resolved input of a run."""

    role: str
    type: str
    path: str
    artifact_id: str | None = None
    alias: str | None = None
    hash: str | None = None


class OutputSpec(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """An output a run promises to write."""

    role: str
    type: str
    path: str
    alias: str
    marker: str | None = None


class StageSpec(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One stage of a pipeline as planned (a sweep stage has one run per point)."""

    name: str
    run_ids: list[str]
    parents: list[str] = []
    sweep_id: str | None = None


# -------------------------------------------------------------------- runs


class RunSubmitted(Event, frozen=True, kw_only=True, omit_defaults=True):
    """A run was accepted with everything needed to start it (stream ``run-<id>``)."""

    run_id: str
    name: str
    user: str
    executor: str
    run_dir: str
    recipe: dict[str, Any]
    recipe_path: str | None = None
    cache_key: str | None = None
    inputs: list[InputRef] = []
    outputs: list[OutputSpec] = []
    repo: str | None = None
    repo_commit: str | None = None
    repo_dirty: bool | None = None
    repo_diff: str | None = None
    pipeline_id: str | None = None
    stage_name: str | None = None
    sweep_id: str | None = None
    sweep_index: int | None = None
    no_cache: bool = False
    tracking_url: str | None = None  # the W&B run page when [tracking.wandb] is set
    cache_parts: CacheKeyParts | None = None  # what cache_key covers (absent before labctl recorded it)


class RunPending(Event, frozen=True, kw_only=True, omit_defaults=True):
    """A pipeline stage was recorded, waiting for its parents (state ``created``)."""

    run_id: str
    name: str
    user: str
    executor: str
    run_dir: str
    recipe: dict[str, Any]
    pipeline_id: str
    stage_name: str
    parents: list[str]
    recipe_path: str | None = None
    sweep_id: str | None = None
    sweep_index: int | None = None
    #: submitted with --no-cache: run even when an identical run succeeded
    no_cache: bool = False


class RunCacheHit(Event, frozen=True, kw_only=True):
    """An identical run already succeeded: no job, outputs are the producer's."""

    run_id: str
    producer_run_id: str
    cache_key: str


class RunCoalesced(Event, frozen=True, kw_only=True):
    """An identical run is in flight: this one waits for it (``awaiting_peer``)."""

    run_id: str
    producer_run_id: str
    cache_key: str


class CacheClaimed(Event, frozen=True, kw_only=True):
    """A run became the one producer of a cache key (stream ``cache-<key>``)."""

    cache_key: str
    run_id: str


class CacheReleased(Event, frozen=True, kw_only=True):
    """The producer of a cache key ended; ``succeeded`` says whether the key is now cached."""

    cache_key: str
    run_id: str
    succeeded: bool


class RunClaimed(Event, frozen=True, kw_only=True):
    """An agent took a queued run to execute it (one claim per run)."""

    run_id: str
    agent_id: str


class JobSubmitted(Event, frozen=True, kw_only=True, omit_defaults=True):
    """The executor accepted the job; ``job_id`` is its handle (pid group or SLURM id)."""

    run_id: str
    executor: str
    job_id: str
    agent_id: str | None = None
    #: a local job's process start time (clock ticks after boot): a reused pid is never mistaken for it
    process_start: int | None = None
    #: the GPU ids a local job was given (its CUDA_VISIBLE_DEVICES)
    gpus: list[str] = []


class SubmissionIntended(Event, frozen=True, kw_only=True):
    """About to hand the run to an external scheduler (recovery looks it up by name)."""

    run_id: str
    executor: str
    job_name: str
    agent_id: str | None = None


class RunStarted(Event, frozen=True, kw_only=True, omit_defaults=True):
    run_id: str
    started_at: datetime
    host: str | None = None
    job_id: str | None = None


class RunFinished(Event, frozen=True, kw_only=True, omit_defaults=True):
    """A run reached a terminal state (see LABCTL-FORMATS.md run states)."""

    run_id: str
    state: str
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class CancelRequested(Event, frozen=True, kw_only=True, omit_defaults=True):
    run_id: str
    actor: str
    forced: bool = False
    reason: str | None = None


# --------------------------------------------------------------- artifacts


class ArtifactRegistered(Event, frozen=True, kw_only=True, omit_defaults=True):
    """Bytes entered the content-addressed store (stream ``artifact-<id>``)."""

    artifact_id: str
    hash: str
    kind: str
    path: str
    user: str
    producer_run_id: str | None = None
    size_bytes: int | None = None
    metadata: dict[str, Any] = {}


class OutputLinked(Event, frozen=True, kw_only=True, omit_defaults=True):
    run_id: str
    role: str
    artifact_id: str
    path: str
    step: int | None = None


class AliasSet(Event, frozen=True, kw_only=True):
    user: str
    alias: str
    artifact_id: str


class AliasRemoved(Event, frozen=True, kw_only=True):
    user: str
    alias: str


class ArtifactsCollected(Event, frozen=True, kw_only=True):
    """gc removed these artifacts' bytes."""

    artifact_ids: list[str]
    actor: str
    reason: str


# --------------------------------------------------- pipelines and sweeps


class PipelineCreated(Event, frozen=True, kw_only=True, omit_defaults=True):
    pipeline_id: str
    name: str
    user: str
    stages: list[StageSpec]
    file_path: str | None = None
    from_run: str | None = None


class PipelineFinished(Event, frozen=True, kw_only=True, omit_defaults=True):
    pipeline_id: str
    state: str
    reason: str | None = None


class SweepCreated(Event, frozen=True, kw_only=True, omit_defaults=True):
    sweep_id: str
    name: str
    user: str
    arg: str
    start: int
    end: int
    run_ids: list[str]
    throttle: int | None = None
    aggregate_run_id: str | None = None
    pipeline_id: str | None = None


class SweepFinished(Event, frozen=True, kw_only=True):
    sweep_id: str
    state: str


# ------------------------------------------------------------------- evals


class EvalRequested(Event, frozen=True, kw_only=True):
    """An eval policy asked for an eval of a checkpoint (stream ``eval-<key>``)."""

    eval_key: str
    policy: str
    checkpoint_artifact_id: str
    eval_recipe_hash: str
    run_id: str
    step: int | None


class EvalRecorded(Event, frozen=True, kw_only=True):
    eval_key: str
    run_id: str
    metrics: dict[str, Any]


# ------------------------------------------------------------ cache streams


class CacheJoined(Event, frozen=True, kw_only=True):
    """A run coalesced onto the in-flight producer of a cache key (stream ``cache-<key>``)."""

    cache_key: str
    run_id: str


class CacheInvalidated(Event, frozen=True, kw_only=True):
    """The cached outputs of a key are gone (gc), so the next run computes it again."""

    cache_key: str
    reason: str


# ----------------------------------------------------------------- metrics


class MetricPoint(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One line a job logged: a step and its values (``"nan"``/``"inf"``/``"-inf"`` for non-finite ones)."""

    step: int
    values: dict[str, float | str]
    at: float | None = None  # the job's clock (epoch seconds) when it logged the line


class MetricsLogged(Event, frozen=True, kw_only=True, omit_defaults=True):
    """Lines of a run's ``.lab/metrics.jsonl``, bytes ``[offset, end)``, were ingested (stream ``metrics-<run id>``).

    The next batch starts at ``end``: an ingester that restarts resumes there, and
    one that races another loses on the stream version, so no line is read twice.
    """

    run_id: str
    offset: int
    end: int
    points: list[MetricPoint]
    skipped: int = 0  # lines that were not a JSON object with numeric values


# ------------------------------------------------------------------ imports
# Facts brought over from an original (Rust) labctl registry by `labctl import`.
# They carry the original's own timestamps, since they happened before they were recorded here.


class OriginalEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One row of the original registry's own ``events`` table, as it was."""

    id: int
    type: str
    payload: dict[str, Any]
    created_at: datetime


class TrackingLink(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A run's experiment-tracker page (the original's ``tracking`` row)."""

    entity: str
    project: str
    url: str
    source: str
    created_at: datetime
    group: str | None = None


class RunImported(Event, frozen=True, kw_only=True, omit_defaults=True):
    """A run of the original registry, as it stood when imported (stream ``run-<id>``)."""

    run_id: str
    name: str
    user: str
    status: str
    executor: str
    run_dir: str
    recipe: dict[str, Any]
    recipe_hash: str
    context: dict[str, Any]
    repo: str
    source_path: str
    created_at: datetime
    finished_at: datetime | None = None
    job_id: str | None = None
    cache_key: str | None = None
    producer_run_id: str | None = None  # the original's coalesced_peer_run_id
    pipeline_id: str | None = None
    stage_name: str | None = None
    dependency_on: dict[str, Any] | None = None
    inputs: list[InputRef] = []
    tracking: TrackingLink | None = None
    repo_commit: str | None = None


class RunStatusImported(Event, frozen=True, kw_only=True, omit_defaults=True):
    """A later import saw an original run's status (or job id, or end) change."""

    run_id: str
    status: str
    finished_at: datetime | None = None
    job_id: str | None = None
    tracking: TrackingLink | None = None


class OriginalEventsImported(Event, frozen=True, kw_only=True, omit_defaults=True):
    """Rows of the original's ``events`` table about one run (or none: ``run_id`` None), kept as history."""

    events: list[OriginalEvent]
    run_id: str | None = None


class ArtifactImported(Event, frozen=True, kw_only=True, omit_defaults=True):
    """An artifact of the original registry (stream ``artifact-<id>``).

    ``integrity`` says what the import found on disk: ``verified`` (the bytes hash
    to ``hash``), ``mismatch`` (they hash to ``observed_hash``: not trusted),
    ``missing`` (no such path), or ``path_identity`` (the in-place layout, whose
    id and hash name the path, not the bytes).
    """

    artifact_id: str
    hash: str
    kind: str
    path: str
    user: str
    created_at: datetime
    integrity: str
    producer_run_id: str | None = None
    metadata: dict[str, Any] = {}
    observed_hash: str | None = None
    alias_segment: str | None = None


class AliasImported(Event, frozen=True, kw_only=True, omit_defaults=True):
    """An alias of the original: global (``artifact_aliases``) or one user's (``artifact_user_aliases``)."""

    user: str
    alias: str
    artifact_id: str
    set_at: datetime
    kind: str | None = None
    scope: str = "global"


class PipelineImported(Event, frozen=True, kw_only=True, omit_defaults=True):
    """A pipeline of the original, its stages read from its runs (stream ``pipeline-<id>``)."""

    pipeline_id: str
    name: str
    user: str
    stages: list[StageSpec]
    status: str
    created_at: datetime
    file_path: str | None = None
    finished_at: datetime | None = None


class EvalImported(Event, frozen=True, kw_only=True, omit_defaults=True):
    """An eval request of the original with its attempt count (stream ``eval-<key>``)."""

    eval_key: str
    policy: str
    checkpoint_artifact_id: str
    eval_recipe_hash: str
    state: str
    attempts: int
    user: str
    requested_at: datetime
    updated_at: datetime
    run_id: str | None = None
    step: int | None = None
    metrics: dict[str, Any] | None = None


class UserImported(Event, frozen=True, kw_only=True, omit_defaults=True):
    """A user of the original registry (stream ``user-<name>``)."""

    name: str
    created_at: datetime
    pg_role: str | None = None


class CacheKeyParts(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a run's cache key covers; the key is the sha256 of these parts' canonical JSON.

    ``inputs``: role -> content hash (an ``external`` input, or an artifact known only by
    its path, by the content of its files); ``files``: the files a recipe without ``repo``
    names in its command (scripts), path -> content hash.
    """

    recipe: str  # sha256 of the canonical recipe (command, params, args, env, inputs and outputs as written)
    source: str | None = None  # the repo's commit, and a hash of its uncommitted changes
    inputs: dict[str, str] = {}
    files: dict[str, str] = {}


class RegistryImported(Event, frozen=True, kw_only=True):
    """An import from an original registry finished (stream ``import-<source id>``).

    ``fingerprint`` sums up the source's tables as read: a later import that finds
    the same one has nothing to do.
    """

    source: str
    fingerprint: str
    events: int
