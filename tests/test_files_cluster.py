"""cluster.toml: every documented section is accepted, lookup order, local profile, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.files import (
    OUTPUT_TYPES,
    FileFormatError,
    dump_cluster_toml,
    find_cluster_config,
    load_cluster_config,
    local_profile,
)
from labctl.layout import run_dir

DATA = Path(__file__).parent / "data" / "files"


def test_example_cluster_config_accepts_every_section() -> None:
    cfg = load_cluster_config(DATA / "cluster.toml")
    assert cfg.name == "lab-cluster"
    assert cfg.filesystem.shared_group == "lab"
    assert cfg.filesystem.output_roots["checkpoint_stream"] == "/shared/labctl/outputs/checkpoint_stream"
    assert cfg.repos == {"nanogpt": "/shared/repos/nanogpt"}
    assert cfg.scheduler.kind == "slurm"
    assert cfg.slurm.gres_gpu_syntax == "gpu:a100:{n}"
    assert cfg.dispatch.policies_dir == "/shared/labctl/policies"
    assert cfg.env == {"HF_HUB_OFFLINE": "1"}
    assert (cfg.throttle.max_running_per_user, cfg.throttle.max_running) == (8, 64)
    assert cfg.database.url == "postgresql://labctl@db.internal/labctl"
    assert cfg.local.slots == 4


def test_minimal_config_gets_defaults_and_relative_paths_resolve_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text('name = "c"\n[filesystem]\nruns_base = "runs"\n[repos]\nmain = "~/src/main"\n')
    cfg = load_cluster_config(path)
    assert cfg.filesystem.runs_base == str(tmp_path / "runs")
    assert cfg.repos["main"] == str(Path.home() / "src" / "main")
    assert cfg.scheduler.kind == "slurm"  # the original labctl's default
    assert cfg.slurm.gres_gpu_syntax == "gpu:{n}"
    assert (cfg.dispatch.reconcile_interval_secs, cfg.dispatch.evald_interval_secs) == (30, 60)
    assert cfg.database.url is None and cfg.throttle.max_running is None


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ('[scheduler]\nkind = "pbs"\n', "scheduler.kind", "invalid enum value"),
        ("[slurm]\ngres_gpu_syntax = 'gpu'\n", "slurm.gres_gpu_syntax", "{n}"),
        ("[dispatch]\nreconcile_interval_secs = 0\n", "dispatch.reconcile_interval_secs", "1 or more"),
        ('[local]\ngpus = ["0", "0"]\n', "local.gpus", "distinct device ids"),
        ('[local]\nmem = "lots"\n', "local.mem", "bad memory size"),
        (
            "[filesystem.artifact_roots]\ncheckpoint = 3\n",
            "filesystem.artifact_roots.checkpoint",
            "expected `str`",
        ),
    ],
)
def test_bad_cluster_config_names_the_field(tmp_path: Path, extra: str, field: str, message: str) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text('name = "c"\n[filesystem]\nruns_base = "/r"\n' + extra)
    with pytest.raises(FileFormatError) as caught:
        load_cluster_config(path)
    assert caught.value.path == str(path)
    assert caught.value.field == field
    assert message in caught.value.message


@pytest.fixture
def config_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LABCTL_CLUSTER", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def place(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('name = "c"\n[filesystem]\nruns_base = "/r"\n')
    return path


def test_no_config_anywhere_means_local_profile(config_dirs: Path) -> None:
    assert find_cluster_config(None) is None


def test_lookup_order_is_flag_env_xdg_home(config_dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = place(config_dirs / "home" / ".config" / "labctl" / "cluster.toml")
    assert find_cluster_config(None) == home

    xdg = place(config_dirs / "xdg" / "labctl" / "cluster.toml")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_dirs / "xdg"))
    assert find_cluster_config(None) == xdg

    env = place(config_dirs / "env.toml")
    monkeypatch.setenv("LABCTL_CLUSTER", str(env))
    assert find_cluster_config(None) == env

    flag = place(config_dirs / "flag.toml")
    assert find_cluster_config(flag) == flag


def test_xdg_dir_without_a_config_falls_back_to_home(config_dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = place(config_dirs / "home" / ".config" / "labctl" / "cluster.toml")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_dirs / "empty-xdg"))
    assert find_cluster_config(None) == home


def test_named_config_that_is_missing_is_returned_so_loading_reports_it(
    config_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABCTL_CLUSTER", str(config_dirs / "missing.toml"))
    found = find_cluster_config(None)
    assert found == config_dirs / "missing.toml"
    with pytest.raises(FileFormatError, match="file not found"):
        load_cluster_config(found)


def test_local_profile_has_a_root_for_every_output_type(tmp_path: Path) -> None:
    cfg = local_profile(tmp_path)
    assert cfg.scheduler.kind == "local"
    # run dirs in the original's layout, <runs_base>/runs/<user>/<run id>, land under $LABCTL_HOME/runs
    assert run_dir(cfg.filesystem.runs_base, "u", "run_x") == tmp_path / "runs" / "u" / "run_x"
    assert set(OUTPUT_TYPES) <= set(cfg.filesystem.output_roots)
    assert all(root.startswith(str(tmp_path / "artifacts")) for root in cfg.filesystem.artifact_roots.values())


def test_dumped_config_loads_back_equal(tmp_path: Path) -> None:
    for cfg in (local_profile(tmp_path), load_cluster_config(DATA / "cluster.toml")):
        path = tmp_path / "out.toml"
        path.write_text(dump_cluster_toml(cfg))
        assert load_cluster_config(path) == cfg
