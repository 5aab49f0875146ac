"""Fixtures of the compat tests: a cluster set up the way a team on the original labctl has it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compat.lab import Lab


@pytest.fixture
def lab(env: dict[str, str], tmp_path: Path) -> Lab:
    made = Lab(tmp_path / "lab", env)
    made.write()
    return made
