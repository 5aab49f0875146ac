"""The original's flags on other commands: ``init --migrate-from`` of a cluster with a registry,
``gc --terminal-snapshots``, ``service install --bind --force``, ``admin add-user --no-pg-role
--no-create-dirs`` (issue 9)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import labctl_bin, run_cli, wait_for, without_user_manager
from tests.original.seed import seed_registry


@pytest.fixture
def original_registry(original_url: str, tmp_path: Path) -> tuple[str, int]:
    """A database holding a seeded original registry (newest schema): its URL and how many runs it has."""
    with psycopg.connect(original_url, autocommit=True) as c:
        seeded = seed_registry(c, "0003", tmp_path / "store", users=2, pipelines_per_user=1, sweeps_per_user=0)
    return original_url, len(seeded.run_ids)


def _foreign_cluster(tmp_path: Path, url: str) -> Path:
    """The original cluster.toml of the registry at ``url``: its [postgres] names that database."""
    params = conninfo_to_dict(url)
    foreign = tmp_path / "foreign.toml"
    foreign.write_text(
        f'name = "berlin"\n[filesystem]\nruns_base = "{tmp_path}/runs"\n'
        f'[filesystem.artifact_roots]\ncheckpoint = "{tmp_path}/store"\n[scheduler]\nkind = "slurm"\n'
        f'[postgres]\nhost = "{params["host"]}"\nport = {params["port"]}\ndatabase = "{params["dbname"]}"\n'
        f'user = "{params["user"]}"\n'
    )
    return foreign


def test_import_from_an_original_cluster_toml_reads_the_registry_its_postgres_names(
    labctl_env: dict[str, str], tmp_path: Path, original_registry: tuple[str, int]
) -> None:
    url, runs = original_registry
    foreign = _foreign_cluster(tmp_path, url)

    proc = run_cli(labctl_env, "import", "--from", str(foreign), "--dry-run", "--json", check=True)

    report = json.loads(proc.stdout)
    assert report["dry_run"] and report["kinds"]["runs"]["new"] == runs


def test_init_migrate_from_a_cluster_with_a_registry_imports_it_into_the_log(
    labctl_env: dict[str, str], tmp_path: Path, original_registry: tuple[str, int]
) -> None:
    url, runs = original_registry
    foreign = _foreign_cluster(tmp_path, url)
    env = {k: v for k, v in labctl_env.items() if k != "LABCTL_DATABASE_URL"}
    out = tmp_path / "cluster.toml"

    proc = run_cli(
        env, "init", "--yes", "--no-detect", "--no-create-dirs", "--no-agent", "--migrate-from", str(foreign),
        "--output", str(out), "--name", "here", "--runs-base", str(tmp_path / "here-runs"),
    )  # fmt: skip

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "imported from" in proc.stdout
    with psycopg.connect(url) as c:  # our tables beside the original's, in the same database
        assert c.execute("SELECT count(*) FROM labctl.events").fetchone()[0] > 0  # type: ignore[index]
    listed = run_cli(env, "--cluster", str(out), "status", "--all", "--json", check=True).stdout.splitlines()
    assert len(listed) == runs


def test_init_migrate_from_with_no_doctor_leaves_the_database_alone_and_says_how_to_import(
    labctl_env: dict[str, str], tmp_path: Path
) -> None:
    foreign = tmp_path / "foreign.toml"
    foreign.write_text(
        f'name = "berlin"\n[filesystem]\nruns_base = "{tmp_path}/runs"\n[postgres]\nhost = "/nonexistent/socket"\n'
    )

    proc = run_cli(
        labctl_env, "init", "--yes", "--no-detect", "--no-create-dirs", "--no-agent", "--no-doctor",
        "--migrate-from", str(foreign), "--output", str(tmp_path / "cluster.toml"),
    )  # fmt: skip

    assert proc.returncode == 0, proc.stderr
    assert f"run `labctl import --from {foreign}`" in proc.stdout


def _ended_run_with_a_source_snapshot(env: dict[str, str], tmp_path: Path) -> tuple[Path, Path]:
    """A local run of a recipe with a repo (so its run dir holds source/), ended; its cluster.toml and run dir."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hello.sh").write_text("echo hi\n")
    for args in (["init", "-q"], ["add", "."], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(
        f'name = "lab"\n[filesystem]\nruns_base = "{tmp_path}/runs"\n[repos]\nmyrepo = "{repo}"\n'
        '[scheduler]\nkind = "local"\n'
    )
    recipe = tmp_path / "hello.toml"
    recipe.write_text('name = "hello"\nrepo = "myrepo"\ncommand = ["bash", "hello.sh"]\n')
    out = run_cli(env, "--cluster", str(cluster), "run", str(recipe), "--wait", check=True).stdout
    run_dir = Path(next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("run_dir: ")))
    return cluster, run_dir


def test_gc_terminal_snapshots_deletes_the_source_of_ended_runs_and_keeps_the_rest(
    env: dict[str, str], tmp_path: Path
) -> None:
    cluster, run_dir = _ended_run_with_a_source_snapshot(env, tmp_path)
    assert (run_dir / "source").is_dir()
    kept = sorted(p.name for p in run_dir.iterdir() if p.name != "source")

    proc = run_cli(env, "--cluster", str(cluster), "gc", "--terminal-snapshots", check=True)
    again = run_cli(env, "--cluster", str(cluster), "gc", "--terminal-snapshots", check=True)

    assert proc.stdout == "removed_snapshots: 1\n"  # the original's output line
    assert again.stdout == "removed_snapshots: 0\n"
    assert not (run_dir / "source").exists()
    assert sorted(p.name for p in run_dir.iterdir()) == kept  # .lab/ (context, provenance, log) stays


def test_dispatch_gc_makes_the_agent_delete_ended_runs_sources(env: dict[str, str], tmp_path: Path) -> None:
    cluster, run_dir = _ended_run_with_a_source_snapshot(env, tmp_path)
    with cluster.open("a") as f:
        f.write("[dispatch]\n[dispatch.gc]\ninterval_secs = 1\nmin_terminal_age_secs = 0\n")
    assert (run_dir / "source").is_dir()

    proc = subprocess.Popen(
        [*labctl_bin(), "--cluster", str(cluster), "agent"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: not (run_dir / "source").exists(), "the agent's source gc", timeout=60)
    finally:
        proc.terminate()
        proc.wait(30)


def test_service_install_takes_bind_and_refuses_to_replace_a_unit_without_force(
    labctl_env: dict[str, str], tmp_path: Path
) -> None:
    env = without_user_manager({**labctl_env, "HOME": str(tmp_path / "user")})
    unit = Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user" / "labctl-ui.service"

    run_cli(env, "service", "install", "--ui", "--bind", "0.0.0.0:9999", check=True)
    assert " serve --bind 0.0.0.0:9999\n" in unit.read_text()
    before = unit.read_text()

    refused = run_cli(env, "service", "install", "--ui", "--bind", "127.0.0.1:1234")
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"labctl: error: {unit} already exists; pass --force")
    assert unit.read_text() == before

    run_cli(env, "service", "install", "--ui", "--bind", "127.0.0.1:1234", "--force", check=True)
    assert " serve --bind 127.0.0.1:1234\n" in unit.read_text()

    bad = run_cli(env, "service", "install", "--ui", "--bind", "nohost", "--force")
    assert bad.returncode == 2 and "expected HOST:PORT" in bad.stderr


@pytest.mark.parametrize("flags", [["--no-create-dirs"], []])
def test_admin_add_user_no_create_dirs_leaves_the_filesystem_alone(
    labctl_env: dict[str, str], tmp_path: Path, flags: list[str]
) -> None:
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(f'name = "lab"\n[filesystem]\nruns_base = "{tmp_path}/runs"\n[scheduler]\nkind = "local"\n')

    proc = run_cli(labctl_env, "--cluster", str(cluster), "admin", "add-user", "bob", "--no-pg-role", *flags)

    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs" / "runs" / "bob").is_dir() is (not flags)  # <runs_base>/runs/<user>, as the original
    assert "postgres role" not in proc.stdout  # --no-pg-role: not even mentioned


def test_service_status_and_restart_without_a_flag_mean_the_installed_units(
    labctl_env: dict[str, str], tmp_path: Path
) -> None:
    env = without_user_manager({**labctl_env, "HOME": str(tmp_path / "user")})

    none = run_cli(env, "service", "restart")
    run_cli(env, "service", "install", "--agent", check=True)
    one = run_cli(env, "service", "status")

    assert none.returncode == 1 and "no labctl units installed" in none.stderr
    # no user session here: the one line names exactly the installed unit
    assert one.returncode == 1 and "labctl-agent.service" in one.stderr and "labctl-ui" not in one.stderr
