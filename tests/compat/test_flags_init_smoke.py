"""The original's own smoke test (tests/smoke.rs) drives ``init`` with these flags; here it runs verbatim.

Each test is one of smoke.rs's ``init`` invocations with the same arguments and
the same assertions, plus what a user would check on top.
"""

from __future__ import annotations

import os
from pathlib import Path

from labctl.files import load_cluster_config
from tests.conftest import run_cli, without_user_manager

#: smoke.rs run_init_in_tempdir: the flags every invocation starts with
SMOKE_FLAGS = ["init", "--yes", "--no-detect", "--no-create-dirs", "--no-agent", "--no-doctor"]


def write_fixture_cluster(tmp: Path) -> Path:
    """smoke.rs write_fixture_cluster, byte for byte."""
    path = tmp / "source-cluster.toml"
    root = str(tmp)
    path.write_text(
        f"""name = "fixture"

[filesystem]
runs_base = "{root}/runs"

[filesystem.artifact_roots]
dataset     = "{root}/datasets"
checkpoint  = "{root}/checkpoints"
eval_result = "{root}/eval_logs"

[scheduler]
kind = "slurm"
"""
    )
    return path


def run_init_in_tempdir(env: dict[str, str], tmp: Path, *args: str) -> Path:
    out = tmp / "cluster.smoke.toml"
    proc = run_cli(env, *SMOKE_FLAGS, "--output", str(out), *args)
    assert proc.returncode == 0, f"labctl init failed\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert out.exists() or out.is_symlink(), f"init didn't create {out}"
    return out


def test_labctl_init_greenfield_writes_loadable_config(labctl_env: dict[str, str], tmp_path: Path) -> None:
    r = str(tmp_path)
    out = run_init_in_tempdir(
        labctl_env,
        tmp_path,
        "--name",
        "smoke-greenfield",
        "--runs-base",
        f"{r}/runs",
        "--artifact-root",
        f"checkpoint={r}/ck",
        "--artifact-root",
        f"dataset={r}/ds",
        "--artifact-root",
        f"eval_result={r}/er",
    )

    val = run_cli(labctl_env, "validate", str(out))
    assert val.returncode == 0, f"validate on init output failed:\n{val.stdout}\n{val.stderr}"
    config = load_cluster_config(out)
    assert config.name == "smoke-greenfield"
    assert config.filesystem.artifact_roots["checkpoint"] == f"{r}/ck"
    # --no-create-dirs and --no-doctor: nothing made, no database touched
    assert not (tmp_path / "runs").exists()
    assert not (Path(labctl_env["LABCTL_HOME"]) / "pg").exists()


def test_labctl_init_migrate_from_carries_schema(labctl_env: dict[str, str], tmp_path: Path) -> None:
    src = write_fixture_cluster(tmp_path)
    out = run_init_in_tempdir(
        labctl_env,
        tmp_path,
        "--migrate-from",
        str(src),
        "--name",
        "smoke-migrate",
        "--runs-base",
        "/tmp/smoke-migrate-runs",
    )

    body = out.read_text()
    assert 'name = "smoke-migrate"' in body
    assert 'runs_base = "/tmp/smoke-migrate-runs"' in body
    assert "[filesystem.artifact_roots]" in body
    config = load_cluster_config(out)
    assert config.scheduler.kind == "slurm"  # carried over from the foreign cluster
    assert config.filesystem.artifact_roots["eval_result"] == f"{tmp_path}/eval_logs"


def test_labctl_init_join_symlinks_source(labctl_env: dict[str, str], tmp_path: Path) -> None:
    src = write_fixture_cluster(tmp_path)
    out = tmp_path / "cluster.smoke.toml"
    proc = run_cli(labctl_env, *SMOKE_FLAGS, "--join", str(src), "--output", str(out))

    assert proc.returncode == 0, f"labctl init --join failed\n{proc.stdout}\n{proc.stderr}"
    assert out.is_symlink(), f"expected {out} to be a symlink"
    assert out.resolve() == src.resolve()


def test_labctl_init_use_copy_config_creates_regular_file(labctl_env: dict[str, str], tmp_path: Path) -> None:
    src = write_fixture_cluster(tmp_path)
    out = tmp_path / "cluster.smoke.toml"
    proc = run_cli(labctl_env, *SMOKE_FLAGS, "--use", str(src), "--copy-config", "--output", str(out))

    assert proc.returncode == 0, "labctl init --use --copy-config failed"
    assert out.is_file() and not out.is_symlink()
    assert out.read_text() == src.read_text()  # a copy, byte for byte


def test_init_use_links_to_the_adopted_config_like_the_original(labctl_env: dict[str, str], tmp_path: Path) -> None:
    src = write_fixture_cluster(tmp_path)
    out = tmp_path / "cluster.smoke.toml"
    proc = run_cli(labctl_env, *SMOKE_FLAGS, "--use", str(src), "--output", str(out))

    assert proc.returncode == 0, proc.stderr
    assert out.is_symlink() and out.resolve() == src.resolve()


def test_init_greenfield_without_paths_writes_the_local_profile_where_the_original_refused(
    labctl_env: dict[str, str], tmp_path: Path
) -> None:
    """smoke.rs labctl_init_rejects_placeholder_paths: the original had only /path/to/ placeholders to offer
    and refused; ours has a working default (everything under $LABCTL_HOME), so this succeeds."""
    out = run_init_in_tempdir(labctl_env, tmp_path, "--name", "would-have-placeholders")

    config = load_cluster_config(out)
    assert config.name == "would-have-placeholders"
    assert config.filesystem.runs_base.startswith(labctl_env["LABCTL_HOME"])
    assert "/path/to/" not in out.read_text()


def test_init_creates_your_directories_and_says_why_it_installs_no_agent_unless_told_not_to(
    labctl_env: dict[str, str], tmp_path: Path
) -> None:
    env = without_user_manager({**labctl_env, "LABCTL_USER": "alice"})
    out = tmp_path / "cluster.toml"
    proc = run_cli(
        env, "init", "--yes", "--no-detect", "--output", str(out), "--runs-base", str(tmp_path / "runs"), check=True
    )

    # the original's layout: <runs_base>/runs/<user>/
    assert (tmp_path / "runs" / "runs" / "alice").is_dir()
    assert f"created {tmp_path / 'runs' / 'runs' / 'alice'}" in proc.stdout
    assert "agent unit not installed" in proc.stdout
    assert "schema version" in proc.stdout  # without --no-doctor the database is set up and checked


def test_copy_config_without_use_or_join_exits_2(labctl_env: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli(labctl_env, *SMOKE_FLAGS, "--copy-config", "--output", str(tmp_path / "c.toml"))

    assert proc.returncode == 2
    assert proc.stderr == "labctl: error: --copy-config goes with --use or --join\n"
    assert not os.path.lexists(tmp_path / "c.toml")
