"""`labctl hash-outputs --run-dir`: hash a run's finished outputs where they were written.

Runs on the compute node after the job exits 0 and leaves
`<run dir>/.lab/output_hashes.json` (`{role: hash}`) for registration.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec

from labctl.artifacts.atomic import atomic_write_bytes
from labctl.artifacts.context import LAB_DIRNAME, ContextOutput, read_context
from labctl.artifacts.hashing import check_hash, dir_content_hash

OUTPUT_HASHES_FILENAME = "output_hashes.json"
CHECKPOINT_STREAM = "checkpoint_stream"
_STEP_RE = re.compile(r"(\d+)$")


def hash_outputs(run_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Hash every finished content output of the run and write the manifest atomically.

    Skipped: `checkpoint_stream` outputs (registered per step, by path
    identity), outputs with a marker that does not exist, and outputs without
    a marker whose directory is missing or empty. The manifest is written
    even when nothing qualified (`{}`), and the dict is returned.
    """
    ctx = read_context(run_dir)
    hashes: dict[str, str] = {}
    for role in sorted(ctx.outputs):
        output = ctx.outputs[role]
        path = Path(run_dir, output.path)  # absolute in practice; relative means under the run dir
        if output.kind != CHECKPOINT_STREAM and _is_finished(path, output):
            hashes[role] = dir_content_hash(path)
    manifest = output_hashes_path(run_dir)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(manifest, msgspec.json.encode(hashes))
    return hashes


def read_output_hashes(run_dir: str | os.PathLike[str]) -> dict[str, str] | None:
    """The manifest's `{role: hash}`, or None when it is absent or unusable (then re-hash)."""
    try:
        hashes = msgspec.json.decode(output_hashes_path(run_dir).read_bytes(), type=dict[str, str])
        for content_hash in hashes.values():
            check_hash(content_hash)
    except (FileNotFoundError, msgspec.DecodeError, ValueError):
        return None
    return hashes


def checkpoint_steps(output_dir: str | os.PathLike[str], marker: str) -> list[tuple[int, Path]]:
    """Finished steps of a checkpoint stream: `(step, step dir)` sorted by step, then name.

    A step is a sub-directory (not a symlink) whose name ends in digits
    (`step9000`, `iter_049` -> 49, `checkpoint-49`) and that holds `marker`.
    """
    try:
        with os.scandir(output_dir) as it:
            entries = [e for e in it if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    steps: list[tuple[int, str, Path]] = []
    for entry in entries:
        match = _STEP_RE.search(entry.name)
        if match and os.path.exists(os.path.join(entry.path, marker)):
            steps.append((int(match.group(1)), entry.name, Path(entry.path)))
    return [(step, path) for step, _, path in sorted(steps)]


def output_hashes_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / LAB_DIRNAME / OUTPUT_HASHES_FILENAME


def _is_finished(path: Path, output: ContextOutput) -> bool:
    if output.marker is not None:
        return (path / output.marker).exists()
    if not path.is_dir():
        return False
    with os.scandir(path) as it:
        return any(True for _ in it)
