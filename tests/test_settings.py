"""labctl's LABCTL_* settings are read once, in one place, into one typed value the App carries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labctl.errors import InputError
from labctl.settings import Settings, settings_from_env
from tests.conftest import run_cli


def test_settings_take_each_variable_with_its_meaning_and_default() -> None:
    assert settings_from_env({"LABCTL_HOME": "/srv/lab"}) == Settings(home=Path("/srv/lab"))
    given = settings_from_env(
        {
            "LABCTL_HOME": "/srv/lab",
            "LABCTL_DATABASE_URL": "postgresql:///lab",
            "LABCTL_CLUSTER": "/etc/lab/cluster.toml",
            "LABCTL_USER": "alice",
            "LABCTL_DB_RETRY_SECONDS": "0.5",
            "LABCTL_AGENT_STALE_SECONDS": "3",
            "LABCTL_SLURM_BIN_DIR": "/opt/slurm/bin",
            "LABCTL_SLURM_RECOVERY_GRACE": "1",
            "LABCTL_BIN": "/opt/labctl",
        }
    )
    assert (given.database_url, given.cluster, given.user) == (
        "postgresql:///lab",
        Path("/etc/lab/cluster.toml"),
        "alice",
    )
    assert (given.db_retry_seconds, given.agent_stale_seconds, given.slurm_recovery_grace) == (0.5, 3.0, 1.0)
    assert (given.slurm_bin_dir, given.labctl_bin) == ("/opt/slurm/bin", "/opt/labctl")
    assert settings_from_env({}).home == Path.home() / ".labctl"


def test_a_setting_that_is_not_a_number_is_refused_by_name() -> None:
    with pytest.raises(InputError, match=r"^LABCTL_AGENT_STALE_SECONDS='soon': expected a number of seconds$"):
        settings_from_env({"LABCTL_AGENT_STALE_SECONDS": "soon"})


def test_the_cli_refuses_a_bad_setting_in_one_line_with_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "LABCTL_HOME": str(tmp_path), "LABCTL_DB_RETRY_SECONDS": "ten"}
    proc = run_cli(env, "status")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "labctl: error: LABCTL_DB_RETRY_SECONDS='ten': expected a number of seconds"
