"""`<run dir>/.lab/context.json`: what a job needs to know about its run, shared by submitter and job."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

from labctl.artifacts.atomic import atomic_write_bytes

LAB_DIRNAME = ".lab"
CONTEXT_FILENAME = "context.json"
SCHEMA_VERSION = 1


class ContextError(ValueError):
    """context.json is missing or does not have the expected shape."""


class ContextInput(msgspec.Struct, kw_only=True):
    """A resolved input, as the original writes it (``role``, ``artifact_id``, ``resolved_path``) plus ours."""

    role: str
    artifact_id: str | None
    resolved_path: str
    type: str
    alias: str | None = None


class ContextOutput(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A declared output: the path labctl computed for it and how to recognise it is done."""

    role: str
    kind: str  # the output type of the recipe: checkpoint_stream, dataset, eval_result, ...
    alias: str
    path: str
    marker: str | None = None


class RunContext(msgspec.Struct, kw_only=True):
    """``context.json`` in the original's schema (version 1); ``user``, ``job_id`` and ``args`` are ours."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    run_dir: str
    recipe_name: str
    recipe_hash: str
    repo: str | None = None
    source_path: str | None = None  # the snapshot the job runs in (None: no repo, the job runs in the run dir)
    source_hash: str | None = None  # content hash of that snapshot
    inputs: list[ContextInput] = []
    outputs: dict[str, ContextOutput] = {}
    params: dict[str, Any] = {}
    provenance: dict[str, Any] | None = None  # the repo's git state, as in .lab/provenance/<repo>/provenance.json
    stage_name: str | None = None
    parent_job_ids: list[str] = []
    user: str
    job_id: str | None = None
    args: dict[str, str] = {}


def context_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / LAB_DIRNAME / CONTEXT_FILENAME


def write_context(run_dir: str | os.PathLike[str], ctx: RunContext) -> Path:
    """Write `<run_dir>/.lab/context.json` atomically; returns its path."""
    path = context_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, msgspec.json.format(msgspec.json.encode(ctx), indent=2))
    return path


def read_context(run_dir: str | os.PathLike[str]) -> RunContext:
    """Decode `<run_dir>/.lab/context.json`; ContextError names the file and the bad field."""
    path = context_path(run_dir)
    try:
        return msgspec.json.decode(path.read_bytes(), type=RunContext)
    except FileNotFoundError:
        raise ContextError(f"{path}: no run context (is this a labctl run dir?)") from None
    except msgspec.DecodeError as e:  # ValidationError is a DecodeError
        raise ContextError(f"{path}: {e}") from None
