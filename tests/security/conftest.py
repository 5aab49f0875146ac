"""Fixtures for the security tests: real OS users beside the one running the tests (CI runs as root)."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


def _can_run_as_another_user() -> str | None:
    """Why the tests that need a second OS user cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to create and switch to other OS users"
    python = Path(sys.executable).resolve()
    if any(not (p.stat().st_mode & 0o001) for p in python.parents):
        return f"{python} is not reachable by other users"
    return None


@pytest.fixture(scope="session")
def os_user() -> Callable[[str], pwd.struct_passwd]:
    """``os_user(name)``: a real OS account (made with useradd if missing), for processes run as it."""
    why = _can_run_as_another_user()
    if why:
        pytest.skip(why)

    def make(name: str) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True, capture_output=True)
            return pwd.getpwnam(name)

    return make


def as_user(account: pwd.struct_passwd) -> dict[str, object]:
    """``subprocess`` keyword arguments that run a process as ``account``."""
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
