"""On disk as the original lays it out (fs_layout.rs, runner.rs, provenance.rs, util.rs).

``<runs_base>/runs/<user>/<run id>/``: the repo snapshot at ``source/<repo>/``
(the job's working directory), ``.lab/context.json`` in the original's schema
(``$LABCTL_CONTEXT``), the job log ``.lab/<job name>_<job id>.log`` and the
provenance bundle ``.lab/provenance/<repo>/``. Directory content hashes match
the original's byte for byte, also for names that are not UTF-8 and for a
single-file root.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from labctl.artifacts import dir_content_hash
from tests.compat.lab import Lab, context_of

#: the job reads $LABCTL_CONTEXT and reports what it saw
READS_CONTEXT = """\
name    = "reads_context"
repo    = "myrepo"
command = ["python", "scripts/read_context.py"]

[inputs.raw]
type = "external"
path = "DATA"

[outputs.seen]
type   = "dataset"
marker = "seen.json"
alias  = "seen_{run.id}"
"""


def reference_dir_hash(root: Path) -> str:
    """The original's util::dir_content_hash, written from its definition: WalkDir (no symlinks followed,
    siblings by file name), a line ``<path relative to root, as Path::display shows it>\\t<sha256>`` per
    regular file, lines joined by newlines, sha256 of the text."""
    lines = []

    def walk(path: Path) -> None:
        if path.is_symlink():
            return
        if path.is_file():
            rel = os.fsencode(path)[len(os.fsencode(root)) :].lstrip(b"/")
            shown = rel.decode("utf-8", "replace")  # Path::display: each invalid sequence becomes U+FFFD
            lines.append(f"{shown}\t{hashlib.sha256(path.read_bytes()).hexdigest()}")
        elif path.is_dir():
            for child in sorted(os.listdir(os.fsencode(path))):
                walk(Path(os.fsdecode(os.path.join(os.fsencode(path), child))))

    walk(root)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def test_a_run_lives_where_the_original_puts_it(lab: Lab, conn: psycopg.Connection[Any]) -> None:
    data = lab.root / "data" / "raw"
    data.mkdir(parents=True)
    (lab.repo / "scripts" / "train.py").write_text("# changed, not committed\n", encoding="utf-8")
    (lab.repo / "notes.txt").write_text("untracked\n")
    recipe = lab.recipe("context.toml", READS_CONTEXT.replace("DATA", str(data)))

    shown = lab.run(recipe)

    run_id = shown["run_id"]
    run_dir = Path(shown["run_dir"])
    assert run_dir == lab.runs_base / "runs" / "alice" / run_id
    source = run_dir / "source" / "myrepo"
    assert (source / "notes.txt").read_text() == "untracked\n"
    assert (source / "scripts" / "train.py").read_text() == "# changed, not committed\n"
    log = run_dir / ".lab" / f"reads_context_local-{run_id}.log"
    assert f"hello from {run_id}" in log.read_text()
    assert json.loads(run_cli_show(lab, run_id))["log"] == str(log)

    ctx = context_of(run_dir)
    assert ctx["schema_version"] == 1
    assert (ctx["run_id"], ctx["run_dir"], ctx["recipe_name"], ctx["repo"]) == (
        run_id,
        str(run_dir),
        "reads_context",
        "myrepo",
    )
    assert len(ctx["recipe_hash"]) == 64
    assert ctx["source_path"] == str(source)
    assert ctx["source_hash"] == reference_dir_hash(source)
    assert ctx["inputs"] == [
        {"role": "raw", "artifact_id": None, "resolved_path": str(data), "type": "external", "alias": None}
    ]
    out = ctx["outputs"]["seen"]
    assert (out["role"], out["kind"], out["alias"], out["marker"]) == ("seen", "dataset", f"seen_{run_id}", "seen.json")
    assert ctx["provenance"]["git_head"] == _git(lab.repo, "rev-parse", "HEAD").strip()
    assert (ctx["stage_name"], ctx["parent_job_ids"]) == (None, [])

    seen = json.loads((Path(out["path"]) / "seen.json").read_text())
    assert seen == {"cwd": str(source), "job_id": f"local-{run_id}", "inputs": ctx["inputs"], "kind": "dataset"}


def run_cli_show(lab: Lab, run_id: str) -> str:
    return lab.cli("show", run_id).stdout


def test_the_provenance_bundle_rebuilds_the_tree_that_ran(lab: Lab, tmp_path: Path) -> None:
    (lab.repo / "scripts" / "eval.py").write_text("print('edited')\n")
    (lab.repo / "extra.bin").write_bytes(bytes(range(256)))
    recipe = lab.recipe("r.toml", 'name = "prov"\nrepo = "myrepo"\ncommand = ["true"]\n')

    run_dir = Path(lab.run(recipe)["run_dir"])

    bundle = run_dir / ".lab" / "provenance" / "myrepo"
    head = _git(lab.repo, "rev-parse", "HEAD").strip()
    assert (bundle / "git_head.txt").read_text() == head
    assert (bundle / "git_status_porcelain.txt").read_text() == _git(lab.repo, "status", "--porcelain").rstrip()
    assert (bundle / "uv.lock").read_text() == "# lock\n"
    prov = json.loads((bundle / "provenance.json").read_text())
    assert prov == context_of(run_dir)["provenance"]
    for name, key in (
        ("tracked.patch", "diff_hash"),
        ("untracked.patch", "untracked_files_hash"),
        ("uv.lock", "uv_lock_hash"),
    ):
        assert prov[key] == hashlib.sha256((bundle / name).read_bytes()).hexdigest(), name
    assert prov["uv_lock_path"] == str(lab.repo / "uv.lock")

    # checkout the head, apply both patches: the snapshot the job ran in
    rebuilt = tmp_path / "rebuilt"
    subprocess.run(["git", "clone", "-q", str(lab.repo), str(rebuilt)], check=True)
    _git(rebuilt, "checkout", "-q", head)
    _git(rebuilt, "apply", str(bundle / "tracked.patch"), str(bundle / "untracked.patch"))
    snapshot = run_dir / "source" / "myrepo"
    assert dir_content_hash(rebuilt, exclude_top=(".git",)) == dir_content_hash(snapshot)


def test_directory_hashes_match_the_original_for_non_utf8_names(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    for raw in (b"caf\xe9.txt", b"a\xff\xfeb", b"ok.txt", b"sub/x\xe2\x82y", b"sub/\xed\xa0\x80s"):
        with open(os.path.join(os.fsencode(tree), raw), "wb") as f:
            f.write(raw)
    expected = reference_dir_hash(tree)
    assert dir_content_hash(tree) == expected
    # spelled out for one file: the name is hashed as U+FFFD, not as its raw byte
    lone = tmp_path / "lone"
    lone.mkdir()
    with open(os.path.join(os.fsencode(lone), b"caf\xe9"), "wb") as f:
        f.write(b"x")
    line = "caf\ufffd\t" + hashlib.sha256(b"x").hexdigest()
    assert dir_content_hash(lone) == hashlib.sha256(line.encode()).hexdigest()


def test_a_single_file_root_hashes_with_an_empty_relative_path(tmp_path: Path) -> None:
    """WalkDir over a file yields the file itself; its path relative to the root is empty."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\x00weights")
    line = "\t" + hashlib.sha256(b"\x00weights").hexdigest()
    assert dir_content_hash(weights) == hashlib.sha256(line.encode()).hexdigest() == reference_dir_hash(weights)
