"""`<run dir>/.lab/context.json`: what a job needs to know about its run, shared by submitter and job."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

from labctl.artifacts.atomic import atomic_write_bytes

LAB_DIRNAME = ".lab"
CONTEXT_FILENAME = "context.json"


class ContextError(ValueError):
    """context.json is missing or does not have the expected shape."""


class ContextInput(msgspec.Struct, omit_defaults=True):
    """A resolved input: where its bytes are, and which artifact they are when known."""

    type: str
    path: str
    id: str | None = None
    alias: str | None = None
    hash: str | None = None


class ContextOutput(msgspec.Struct, omit_defaults=True):
    """A declared output: the path labctl computed for it and how to recognise it is done."""

    type: str
    path: str
    marker: str | None = None
    alias: str | None = None


class RunContext(msgspec.Struct):
    run_id: str
    run_dir: str
    user: str
    recipe_name: str
    job_id: str | None = None
    params: dict[str, Any] = {}
    args: dict[str, str] = {}
    inputs: dict[str, ContextInput] = {}
    outputs: dict[str, ContextOutput] = {}


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
