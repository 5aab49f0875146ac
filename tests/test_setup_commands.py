"""init, admin add-user and service, through the real CLI on real files and a real Postgres."""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from labctl.files import load_cluster_config
from tests.conftest import labctl_bin, run_cli, without_user_manager


def xdg_config(env: dict[str, str]) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "labctl" / "cluster.toml"


def write_shared_config(
    path: Path, *, name: str = "lab", repos: str = 'main = "/shared/repos/main"', absolute: bool = False
) -> Path:
    """A group's cluster.toml; its storage paths relative to it, or spelled out with ``absolute``."""
    base = f"{path.parent}/" if absolute else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'name = "{name}"\n[filesystem]\nruns_base = "{base}runs"\n'
        f'[filesystem.artifact_roots]\ncheckpoint = "{base}artifacts/checkpoint"\n'
        f'[repos]\n{repos}\n[scheduler]\nkind = "local"\n'
    )
    return path


def test_init_writes_a_loadable_config_with_the_given_repos_and_roots_and_runs_doctor(
    labctl_env: dict[str, str], tmp_path: Path
) -> None:
    proc = run_cli(
        labctl_env,
        "init",
        "--yes",
        "--scheduler",
        "local",
        "--name",
        "mylab",
        "--repo",
        f"nanogpt={tmp_path / 'src' / 'nanogpt'}",
        "--artifact-root",
        f"checkpoint={tmp_path / 'ckpts'}",
        check=True,
    )
    config = load_cluster_config(xdg_config(labctl_env))
    assert config.name == "mylab"
    assert config.scheduler.kind == "local"
    assert config.repos == {"nanogpt": str(tmp_path / "src" / "nanogpt")}
    assert config.filesystem.artifact_roots["checkpoint"] == str(tmp_path / "ckpts")
    # the rest of the local profile: everything under $LABCTL_HOME
    assert config.filesystem.runs_base == labctl_env["LABCTL_HOME"]  # run dirs go to <runs_base>/runs/<user>/
    assert config.filesystem.artifact_roots["dataset"].startswith(labctl_env["LABCTL_HOME"])
    assert f"wrote {xdg_config(labctl_env)}" in proc.stdout
    assert "schema version" in proc.stdout
    assert "events" in proc.stdout and "notification queue" in proc.stdout


def test_init_writes_to_the_cluster_option_path_when_given(labctl_env: dict[str, str], tmp_path: Path) -> None:
    dest = tmp_path / "elsewhere" / "cluster.toml"
    run_cli(labctl_env, "--cluster", str(dest), "init", "--yes", "--scheduler", "local", check=True)
    assert load_cluster_config(dest).scheduler.kind == "local"
    assert not xdg_config(labctl_env).exists()


def test_init_without_yes_shows_the_config_and_writes_nothing_when_declined(labctl_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [*labctl_bin(), "init", "--scheduler", "local"],
        env=labctl_env,
        input="n\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "[filesystem]" in proc.stdout and "Write it?" in proc.stdout
    assert proc.stderr.strip() == "labctl: error: nothing written"
    assert not xdg_config(labctl_env).exists()


def test_init_refuses_to_overwrite_an_existing_config_without_force(labctl_env: dict[str, str]) -> None:
    dest = write_shared_config(xdg_config(labctl_env), name="mine")
    before = dest.read_text()
    proc = run_cli(labctl_env, "init", "--yes", "--scheduler", "local")
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"labctl: error: {dest} already exists; pass --force to replace it"
    assert dest.read_text() == before

    run_cli(labctl_env, "init", "--yes", "--scheduler", "local", "--force", check=True)
    assert load_cluster_config(dest).name == "local"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("weights=/data/w", "unknown kind 'weights'; expected one of: checkpoint"),
        ("checkpoint", "expected NAME=PATH"),
        ("=/data/w", "expected NAME=PATH"),
    ],
)
def test_a_bad_artifact_root_exits_2_and_writes_nothing(labctl_env: dict[str, str], value: str, message: str) -> None:
    proc = run_cli(labctl_env, "init", "--yes", "--scheduler", "local", "--artifact-root", value)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
    assert not xdg_config(labctl_env).exists()


def test_a_repo_without_a_path_exits_2(labctl_env: dict[str, str]) -> None:
    proc = run_cli(labctl_env, "init", "--yes", "--scheduler", "local", "--repo", "nanogpt")
    assert proc.returncode == 2
    assert "--repo 'nanogpt': expected NAME=PATH" in proc.stderr


def test_join_links_to_the_shared_file_and_follows_its_later_edits(labctl_env: dict[str, str], tmp_path: Path) -> None:
    shared = write_shared_config(tmp_path / "group" / "cluster.toml", absolute=True)
    proc = run_cli(labctl_env, "init", "--yes", "--join", str(shared), check=True)
    dest = xdg_config(labctl_env)
    assert dest.is_symlink() and dest.resolve() == shared.resolve()
    assert f"linked {dest} -> {shared}" in proc.stdout and "schema version" in proc.stdout
    assert load_cluster_config(dest).filesystem.runs_base == str(tmp_path / "group" / "runs")

    write_shared_config(shared, repos='main = "/shared/repos/main"\nextra = "/shared/repos/extra"', absolute=True)
    assert set(load_cluster_config(dest).repos) == {"main", "extra"}


def test_join_reads_relative_paths_beside_the_shared_file(labctl_env: dict[str, str], tmp_path: Path) -> None:
    shared = write_shared_config(tmp_path / "group" / "cluster.toml")
    run_cli(labctl_env, "init", "--yes", "--join", str(shared), check=True)
    dest = xdg_config(labctl_env)
    assert dest.is_symlink()
    assert load_cluster_config(dest) == load_cluster_config(shared)
    assert load_cluster_config(dest).filesystem.runs_base.startswith(str(tmp_path / "group"))


def test_join_takes_the_shared_file_as_it_is(labctl_env: dict[str, str], tmp_path: Path) -> None:
    shared = write_shared_config(tmp_path / "group" / "cluster.toml")
    proc = run_cli(labctl_env, "init", "--yes", "--join", str(shared), "--repo", "x=/x")
    assert proc.returncode == 2
    assert "--use" in proc.stderr
    assert not xdg_config(labctl_env).exists()


def test_join_of_a_broken_shared_file_exits_2_and_writes_nothing(labctl_env: dict[str, str], tmp_path: Path) -> None:
    shared = tmp_path / "group" / "cluster.toml"
    shared.parent.mkdir()
    shared.write_text('name = "lab"\n[filesystem]\nruns_base = ""\n')
    proc = run_cli(labctl_env, "init", "--yes", "--join", str(shared))
    assert proc.returncode == 2
    assert "filesystem.runs_base" in proc.stderr
    assert not xdg_config(labctl_env).exists() and not xdg_config(labctl_env).is_symlink()


def test_use_copies_the_shared_file_with_changes_and_ignores_its_later_edits(
    labctl_env: dict[str, str], tmp_path: Path
) -> None:
    shared = write_shared_config(tmp_path / "group" / "cluster.toml")
    run_cli(labctl_env, "init", "--yes", "--use", str(shared), "--repo", f"mine={tmp_path / 'mine'}", check=True)
    dest = xdg_config(labctl_env)
    assert dest.is_file() and not dest.is_symlink()
    config = load_cluster_config(dest)
    assert config.name == "lab"
    assert config.repos == {"main": "/shared/repos/main", "mine": str(tmp_path / "mine")}
    # the copy spells paths out absolutely: they still point beside the shared file
    assert config.filesystem.artifact_roots["checkpoint"] == str(tmp_path / "group" / "artifacts" / "checkpoint")

    write_shared_config(shared, name="renamed")
    assert load_cluster_config(dest).name == "lab"


@pytest.mark.skipif(shutil.which("sinfo") is None, reason="needs a real SLURM (sinfo)")
def test_init_finds_the_real_slurm_and_its_default_partition(labctl_env: dict[str, str]) -> None:
    answer = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout
    default = next((p.rstrip("*") for p in answer.split() if p.endswith("*")), None)
    proc = run_cli(labctl_env, "init", "--yes", check=True)
    config = load_cluster_config(xdg_config(labctl_env))
    assert config.scheduler.kind == "slurm"
    assert config.slurm.partition == default
    assert proc.stdout.startswith("scheduler: slurm (found partitions:")


@pytest.mark.parametrize("how", ["--scheduler local", "slurm absent"])
def test_init_writes_the_local_profile_when_asked_or_when_slurm_is_absent(
    labctl_env: dict[str, str], tmp_path: Path, how: str
) -> None:
    args = ["init", "--yes"]
    if how == "--scheduler local":
        args += ["--scheduler", "local"]
    else:
        (tmp_path / "no-slurm").mkdir()
        labctl_env["LABCTL_SLURM_BIN_DIR"] = str(tmp_path / "no-slurm")
    proc = run_cli(labctl_env, *args, check=True)
    config = load_cluster_config(xdg_config(labctl_env))
    assert config.scheduler.kind == "local"
    assert config.slurm.partition is None
    assert proc.stdout.startswith("scheduler: local")


def test_admin_add_user_creates_the_users_dirs_with_the_shared_group_and_is_idempotent(
    labctl_env: dict[str, str], tmp_path: Path
) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(
        f'name = "lab"\n[filesystem]\nruns_base = "runs"\nshared_group = "{group}"\n'
        '[filesystem.artifact_roots]\ncheckpoint = "art/checkpoint"\ndataset = "art/dataset"\n'
        '[filesystem.output_roots]\ncheckpoint_stream = "out/checkpoint_stream"\n'
    )
    proc = run_cli(labctl_env, "--cluster", str(cluster), "admin", "add-user", "alice", check=True)
    expected = [
        tmp_path / "runs" / "runs" / "alice",  # the original's layout: <runs_base>/runs/<user>/
        tmp_path / "art" / "checkpoint" / "aliases" / "alice",
        tmp_path / "art" / "dataset" / "aliases" / "alice",
        tmp_path / "out" / "checkpoint_stream" / "alice",
    ]
    for path in expected:
        assert path.is_dir()
        assert path.stat().st_gid == os.getgid()
        assert path.stat().st_mode & 0o7777 == 0o2775
        assert f"created {path} (group {group}, mode 2775)" in proc.stdout

    again = run_cli(labctl_env, "--cluster", str(cluster), "admin", "add-user", "alice", check=True)
    assert again.stdout.count("exists ") == len(expected)
    assert "created" not in again.stdout


@pytest.mark.parametrize(("name", "message"), [("runs", "is reserved"), ("a/b", "is not allowed")])
def test_admin_add_user_rejects_a_reserved_or_invalid_name(
    labctl_env: dict[str, str], tmp_path: Path, name: str, message: str
) -> None:
    run_cli(labctl_env, "init", "--yes", "--scheduler", "local", "--no-create-dirs", check=True)
    proc = run_cli(labctl_env, "admin", "add-user", name)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
    assert proc.stdout == ""
    assert not (Path(labctl_env["LABCTL_HOME"]) / "runs").exists()


def test_service_install_writes_a_user_unit_running_this_labctl_and_uninstall_removes_it(
    labctl_env: dict[str, str], tmp_path: Path
) -> None:
    env = without_user_manager({**labctl_env, "HOME": str(tmp_path / "user")})
    cluster = write_shared_config(tmp_path / "cluster.toml")
    proc = run_cli(env, "--cluster", str(cluster), "service", "install", "--agent", "--ui")
    assert proc.returncode == 0, proc.stderr
    units = Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user"
    agent_unit = (units / "labctl-agent.service").read_text()
    ui_unit = (units / "labctl-ui.service").read_text()

    exe = labctl_bin()
    assert os.path.isabs(exe[0])
    assert f"ExecStart={' '.join(exe)} --cluster {cluster} agent\n" in agent_unit
    assert f"ExecStart={' '.join(exe)} --cluster {cluster} serve --bind 127.0.0.1:8765\n" in ui_unit
    assert "Restart=on-failure" in agent_unit and "WantedBy=default.target" in agent_unit
    assert "Environment=" in agent_unit and "LABCTL_DATABASE_URL=" in agent_unit
    assert (units / "labctl-agent.service").stat().st_mode & 0o077 == 0  # may hold a password
    assert "systemctl --user" in proc.stdout  # says what to run where there is no user session

    status = run_cli(env, "service", "status", "--agent")
    assert status.returncode != 0 and len(status.stderr.strip().splitlines()) == 1

    proc = run_cli(env, "service", "uninstall", "--agent", "--ui")
    assert proc.returncode == 0, proc.stderr
    assert not (units / "labctl-agent.service").exists() and not (units / "labctl-ui.service").exists()
    assert run_cli(env, "service", "uninstall", "--agent", check=True).stdout.startswith(
        "labctl-agent.service was not installed"
    )


def test_service_without_agent_or_ui_exits_2(labctl_env: dict[str, str]) -> None:
    proc = run_cli(labctl_env, "service", "install")
    assert proc.returncode == 2 and "--agent, --ui or both" in proc.stderr
