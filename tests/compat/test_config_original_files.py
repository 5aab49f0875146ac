"""cluster.toml as a team on the original labctl has it: every example, doc snippet and key is accepted
and means what it meant there (issue 9).

The fixtures in ``clusters/`` reproduce the original's examples/clusters/*.toml,
the cluster files of its docs (ONBOARDING.md, POSTGRES_DEPLOY.md) and one file
with every key any version of it reads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.files import load_cluster_config, read_cluster_config
from tests.conftest import run_cli

CLUSTERS = Path(__file__).parent / "clusters"
ORIGINAL_FILES = [
    "single-user.toml",
    "shared/multi-tenant.toml",
    "with-remote.toml",
    "berlin.toml",
    "julich.toml",
    "every-key.toml",
]


@pytest.mark.parametrize("name", ORIGINAL_FILES)
def test_labctl_validate_accepts_the_original_cluster_file_without_a_warning(
    labctl_env: dict[str, str], name: str
) -> None:
    proc = run_cli(labctl_env, "validate", "--strict", str(CLUSTERS / name))

    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("cluster ")


def test_the_original_default_scheduler_is_slurm_and_its_examples_keep_their_meaning() -> None:
    single = load_cluster_config(CLUSTERS / "single-user.toml")
    assert single.scheduler.kind == "slurm"
    assert (single.slurm.qos, single.slurm.gres_gpu_syntax) == ("low", "gpu:{n}")
    assert single.filesystem.output_roots["checkpoint_stream"] == "/path/to/your/checkpoints"
    assert single.dispatch.gc is None  # no [dispatch]: the original's agent did nothing, gc included

    shared = load_cluster_config(CLUSTERS / "shared" / "multi-tenant.toml")
    assert shared.dispatch.policies_dir == str(CLUSTERS / "policies")  # beside the file, as the original
    assert shared.dispatch.throttle is not None
    assert (shared.dispatch.throttle.job_name, shared.dispatch.throttle.max_concurrent) == ("my_eval_recipe", 16)
    assert shared.dispatch.gc is not None and shared.dispatch.gc.enabled  # on by default under [dispatch]
    assert (shared.dispatch.gc.interval_secs, shared.dispatch.gc.min_terminal_age_secs) == (300, 600)

    remote = load_cluster_config(CLUSTERS / "with-remote.toml")
    assert remote.remote is not None and remote.remote.ssh_alias == "example-login"


def test_every_key_of_every_version_is_read_with_its_value() -> None:
    config, unknown = read_cluster_config(CLUSTERS / "every-key.toml")

    assert unknown == []
    assert config.modules == ["cuda/12.4", "python/3.12"]
    assert config.filesystem.registry_db == "/data/labctl_runs/registry.sqlite"
    assert config.filesystem.shared_group == "lab"
    scheduler = config.scheduler
    assert (scheduler.sbatch, scheduler.sacct, scheduler.scancel, scheduler.squeue) == (
        "/opt/slurm/bin/sbatch",
        "/opt/slurm/bin/sacct",
        "/opt/slurm/bin/scancel",
        "/opt/slurm/bin/squeue",
    )
    assert scheduler.missing_job_grace_secs == 900
    assert (config.slurm.partition, config.slurm.account) == ("gpu", "proj")
    assert (config.dispatch.reconcile_interval_secs, config.dispatch.evald_interval_secs) == (45, 120)
    assert config.dispatch.gc is not None and not config.dispatch.gc.enabled
    assert config.postgres is not None
    assert (config.postgres.host, config.postgres.port, config.postgres.user) == ("db.internal", 6543, "labbot")
    assert config.postgres.statement_timeout_ms == 10000
    assert config.remote is not None and config.remote.ssh_user == "me"
    assert config.server is not None and config.server.timeout_secs == 30


def _config_with(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(f'name = "lab"\n\n[filesystem]\nruns_base = "{tmp_path}/runs"\n\n{extra}')
    return path


def test_a_key_no_version_knows_is_one_warning_line_with_file_line_and_a_suggestion(
    labctl_env: dict[str, str], tmp_path: Path
) -> None:
    path = _config_with(tmp_path, '[slurm]\nqos = "low"\npartiton = "gpu"\n')

    proc = run_cli(labctl_env, "validate", str(path))

    assert proc.returncode == 0
    assert proc.stderr == f"labctl: warning: {path}:8: slurm.partiton: unknown key, ignored; did you mean partition?\n"
    assert load_cluster_config(path).slurm.partition is None  # ignored, as the original ignores it


def test_an_unknown_key_warns_on_every_command_that_reads_the_config_but_the_command_works(
    labctl_env: dict[str, str], tmp_path: Path
) -> None:
    path = _config_with(tmp_path, '[scheduler]\nkind = "local"\n\n[colours]\nx = 1\n')

    proc = run_cli(labctl_env, "--cluster", str(path), "status")

    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == f"labctl: warning: {path}:9: colours: unknown key, ignored\n"
    assert "RUN" in proc.stdout


def test_validate_strict_makes_an_unknown_key_an_error(labctl_env: dict[str, str], tmp_path: Path) -> None:
    path = _config_with(tmp_path, "[dispatch.throttle]\njob_name = 'eval'\nmax_concurent = 2\n")

    proc = run_cli(labctl_env, "validate", "--strict", str(path))

    assert proc.returncode == 2
    assert proc.stderr == (
        f"labctl: error: {path}:8: dispatch.throttle.max_concurent: unknown key; did you mean max_concurrent?\n"
    )
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        (
            "[dispatch.throttle]\njob_name = 'eval'\nmax_concurrent = 0\n",
            "dispatch.throttle.max_concurrent",
            "1 or more",
        ),
        (
            "[dispatch.throttle]\njob_name = ' '\nmax_concurrent = 2\n",
            "dispatch.throttle.job_name",
            "must not be empty",
        ),
        ("[dispatch.gc]\ninterval_secs = 0\n", "dispatch.gc.interval_secs", "1 or more"),
        ("[postgres]\nport = 5432\n", "postgres.host", "required field is missing"),
        ("[postgres]\nhost = 'db'\nport = 70000\n", "postgres.port", "1 to 65535"),
        ("[scheduler]\nsbatch = ''\n", "scheduler.sbatch", "must not be empty"),
        ("modules = 3\n", "modules", "expected `array`"),
    ],
)
def test_what_the_original_also_refuses_is_refused_with_the_field(
    labctl_env: dict[str, str], tmp_path: Path, extra: str, field: str, message: str
) -> None:
    if extra.startswith("modules"):
        path = tmp_path / "cluster.toml"
        path.write_text(f'name = "lab"\n{extra}\n[filesystem]\nruns_base = "{tmp_path}/runs"\n')
    else:
        path = _config_with(tmp_path, extra)

    proc = run_cli(labctl_env, "validate", str(path))

    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert f": {field}: " in proc.stderr and message in proc.stderr
