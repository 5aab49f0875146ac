"""The README's Quickstart, run verbatim: a new user's first five minutes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def quickstart_commands() -> list[str]:
    """The command lines of the README's Quickstart code block, as written there."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the README's Quickstart has no sh code block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_quickstart_runs_verbatim_in_a_fresh_home(labctl_env: dict[str, str], tmp_path: Path) -> None:
    commands = quickstart_commands()
    assert any(c.startswith("labctl run ") for c in commands)
    env = {**labctl_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{labctl_env['PATH']}"}
    env.pop("LABCTL_USER", None)
    script = "set -euo pipefail\n" + "\n".join(commands) + "\n"
    proc = subprocess.run(
        ["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    first, second = re.findall(r"^run_id: (run_\w+)$", out, re.M)
    assert re.search(rf"^{first}: succeeded", out, re.M), out
    # the second, unchanged submission reuses the first run's outputs and says so
    assert f"cache hit: reused the outputs of {first}" in out, out
    assert re.search(rf"^{second}: cache_hit", out, re.M), out
    assert re.search(r"^ok: \d+ events chained", out, re.M), out
    assert "Traceback" not in proc.stderr
