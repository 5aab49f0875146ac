"""hash-outputs on the compute node, context.json, and checkpoint step discovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labctl.artifacts.context import (
    ContextError,
    ContextInput,
    ContextOutput,
    RunContext,
    read_context,
    write_context,
)
from labctl.artifacts.hashing import dir_content_hash
from labctl.artifacts.outputs import checkpoint_steps, hash_outputs, read_output_hashes


def _files(directory: Path, *names: str) -> Path:
    for name in names:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(name)
    return directory


def _context(run_dir: Path, outputs: dict[str, ContextOutput]) -> RunContext:
    return RunContext(
        run_id="run_x",
        run_dir=str(run_dir),
        user="alice",
        recipe_name="train",
        recipe_hash="0" * 64,
        params={"lr": 0.1},
        args={"k": "v"},
        inputs=[ContextInput(role="data", artifact_id=None, resolved_path="/data/mnist", type="external")],
        outputs=outputs,
    )


def test_hash_outputs_writes_the_manifest_for_finished_outputs_only(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = _files(tmp_path / "out" / "done", "done.txt", "w.bin")
    _files(tmp_path / "out" / "unfinished", "partial.bin")
    no_marker = _files(tmp_path / "out" / "no_marker", "r.json")
    (tmp_path / "out" / "empty").mkdir()
    ckpt = _files(tmp_path / "out" / "ckpt", "step1/done.txt")
    outputs = {
        "done": ContextOutput(role="r", kind="dataset", alias="a", path=str(done), marker="done.txt"),
        "unfinished": ContextOutput(
            role="r", kind="dataset", alias="a", path=str(tmp_path / "out" / "unfinished"), marker="done.txt"
        ),
        "no_marker": ContextOutput(role="r", kind="dataset", alias="a", path=str(no_marker)),
        "empty": ContextOutput(role="r", kind="dataset", alias="a", path=str(tmp_path / "out" / "empty")),
        "missing": ContextOutput(role="r", kind="dataset", alias="a", path=str(tmp_path / "out" / "missing")),
        "ckpt": ContextOutput(role="r", kind="checkpoint_stream", alias="a", path=str(ckpt), marker="done.txt"),
    }
    write_context(run_dir, _context(run_dir, outputs))
    expected = {"done": dir_content_hash(done), "no_marker": dir_content_hash(no_marker)}
    assert hash_outputs(run_dir) == expected
    manifest = run_dir / ".lab" / "output_hashes.json"
    assert json.loads(manifest.read_text()) == expected
    assert read_output_hashes(run_dir) == expected
    assert sorted(p.name for p in manifest.parent.iterdir()) == [
        "context.json",
        "output_hashes.json",
    ]


def test_read_output_hashes_is_none_without_a_usable_manifest(tmp_path: Path) -> None:
    assert read_output_hashes(tmp_path) is None
    (tmp_path / ".lab").mkdir()
    (tmp_path / ".lab" / "output_hashes.json").write_text('{"out": "not-a-hash"}')
    assert read_output_hashes(tmp_path) is None


def test_context_round_trips_and_reads_the_documented_shape(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"o": ContextOutput(role="o", kind="dataset", alias="a", path="/o")})
    write_context(tmp_path, ctx)
    assert read_context(tmp_path) == ctx
    # what the original writes (runner.rs, schema_version 1): inputs a list, outputs by role with `kind`
    doc = {
        "schema_version": 1,
        "run_id": "run_1",
        "run_dir": "/abs",
        "recipe_name": "train",
        "recipe_hash": "ab" * 32,
        "repo": "myrepo",
        "source_path": "/abs/source/myrepo",
        "source_hash": "cd" * 32,
        "inputs": [{"role": "data", "artifact_id": "artifact_abcd", "resolved_path": "/abs/ds", "type": "artifact"}],
        "outputs": {
            "ckpt": {
                "role": "ckpt",
                "kind": "checkpoint_stream",
                "alias": "train_run_x",
                "marker": "done.txt",
                "path": "/abs/out/alice/train_run_x",
            }
        },
        "params": {"n": 1},
        "provenance": {"repo_path": "/src/myrepo", "git_head": "f" * 40},
        "stage_name": None,
        "parent_job_ids": [],
        "user": "alice",
    }
    (tmp_path / ".lab" / "context.json").write_text(json.dumps(doc))
    ctx2 = read_context(tmp_path)
    assert ctx2.inputs[0].artifact_id == "artifact_abcd"
    assert ctx2.outputs["ckpt"].marker == "done.txt"


def test_a_malformed_context_names_the_file_and_field(tmp_path: Path) -> None:
    (tmp_path / ".lab").mkdir()
    (tmp_path / ".lab" / "context.json").write_text('{"run_id": 5}')
    with pytest.raises(ContextError, match=r"context\.json.*run_id"):
        read_context(tmp_path)


def test_checkpoint_steps_parses_trailing_digits_and_needs_the_marker(tmp_path: Path) -> None:
    _files(
        tmp_path,
        "step9000/done.txt",
        "iter_049/done.txt",
        "checkpoint-50/done.txt",
        "step100/weights.bin",  # no marker yet
        "latest/done.txt",  # no digits
        "step7",  # a file, not a directory
    )
    assert checkpoint_steps(tmp_path, "done.txt") == [
        (49, tmp_path / "iter_049"),
        (50, tmp_path / "checkpoint-50"),
        (9000, tmp_path / "step9000"),
    ]


def test_checkpoint_steps_of_a_missing_stream_is_empty(tmp_path: Path) -> None:
    assert checkpoint_steps(tmp_path / "nope", "done.txt") == []
