"""Secrets stay out of the log, the scripts and the jobs' inherited environment.

A job environment variable whose name says it is a secret (``*KEY*``,
``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``...) or whose value is a URL with a
password is recorded as the reference ``${NAME}``; its value goes to the run's
``.lab/secrets.env`` (mode 0600), which the job script sources before it
exports the environment, so the reference resolves at job start. A value
written as ``${VAR}`` is a reference already: it resolves from the
environment the job starts in. Jobs never inherit labctl's own credentials.
"""

from __future__ import annotations

import os
import re
import shlex
import uuid
from collections.abc import Mapping
from pathlib import Path

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.I)
URL_WITH_PASSWORD = re.compile(r"://[^/@:\s]*:[^@/\s]+@|\bpassword\s*=", re.I)
REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
SECRETS_FILE = Path(".lab") / "secrets.env"
#: labctl's own credentials: a job (on a compute node, never talking to Postgres) has no use for them
NEVER_INHERITED = frozenset({"LABCTL_DATABASE_URL", "PGPASSWORD", "PGPASSFILE"})


def is_secret(name: str, value: str) -> bool:
    """A literal value that must not be recorded (a ``${VAR}`` reference is fine)."""
    if not value or REFERENCE.match(value):
        return False
    return bool(SECRET_NAME.search(name) or URL_WITH_PASSWORD.search(value))


def split_secrets(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(env with references in place of secret values, {name: secret value})``."""
    secrets = {k: v for k, v in env.items() if is_secret(k, v)}
    return {k: (f"${{{k}}}" if k in secrets else v) for k, v in env.items()}, secrets


def write_secrets(run_dir: str | Path, secrets: Mapping[str, str]) -> None:
    """Add ``secrets`` to the run's ``.lab/secrets.env`` (0600, sourced by the job script)."""
    if not secrets:
        return
    path = Path(run_dir) / SECRETS_FILE
    merged = {**read_secrets(path), **secrets}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"export {k}={shlex.quote(v)}\n" for k, v in merged.items())
    os.replace(tmp, path)


def read_secrets(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    found = {}
    for line in lines:
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            found[name] = value
    return found


def job_inherited_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a job process may inherit: without labctl's credentials or any URL with a password."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k not in NEVER_INHERITED and not (v and URL_WITH_PASSWORD.search(v))}
