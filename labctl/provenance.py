"""Where a run's code came from: the repo's commit, whether it was dirty, and a snapshot of it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import msgspec

from labctl.errors import InputError


class Source(msgspec.Struct, frozen=True, kw_only=True):
    repo: str
    path: str
    commit: str | None  # None: not a git checkout
    dirty: bool
    diff: str | None  # `git diff HEAD` plus the list of untracked files, when dirty

    @property
    def fingerprint(self) -> str:
        """What the cache key needs: the commit and, when dirty, the changes."""
        if self.commit is None:
            return "nogit:" + _tree_digest(Path(self.path))
        extra = hashlib.sha256((self.diff or "").encode()).hexdigest() if self.dirty else ""
        return f"{self.commit}:{extra}"


def _git(path: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def inspect_repo(name: str, path: str) -> Source:
    """Commit, dirtiness and diff of a repo directory (which may be a sub-directory of a checkout)."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"repo {name!r}: {path} is not a directory")
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return Source(repo=name, path=str(root), commit=None, dirty=False, diff=None)
    status = _git(root, "status", "--porcelain", "--", ".") or ""
    dirty = bool(status.strip())
    diff = None
    if dirty:
        untracked = [line[3:] for line in status.splitlines() if line.startswith("??")]
        diff = (_git(root, "diff", "HEAD", "--", ".") or "") + "".join(f"untracked: {u}\n" for u in untracked)
    return Source(repo=name, path=str(root), commit=commit.strip(), dirty=dirty, diff=diff)


def _files(root: Path) -> list[str]:
    listed = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", ".")
    if listed is not None:
        return [f for f in listed.split("\0") if f and (root / f).is_file()]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        found += [str(Path(dirpath, f).relative_to(root)) for f in filenames]
    return found


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for rel in sorted(_files(root)):
        st = (root / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def snapshot(source: Source, dest: Path) -> None:
    """Copy the repo's files as they are now (tracked and untracked, not ignored) into ``dest``."""
    root = Path(source.path)
    dest.mkdir(parents=True, exist_ok=True)
    for rel in _files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
