"""The layers are a contract: `lint-imports` (import-linter, contracts in pyproject.toml) passes.

events imports nothing of projections or labctl; projections nothing of labctl; the library never
imports the CLI, its commands or the web server; executors never import the agent or reactors;
no import cycles. The README's test command runs this, so a broken layer fails the tests.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint is not None, "lint-imports is not installed (pip install -e '.[test]')"
    proc = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout
