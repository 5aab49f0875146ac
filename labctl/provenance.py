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


class RepoProvenance(msgspec.Struct, kw_only=True):
    """A repo's git state at submission, as the original records it (``provenance`` in context.json).

    The texts are also files of the bundle ``.lab/provenance/<repo>/``:
    ``git_head.txt``, ``git_status_porcelain.txt``, ``tracked.patch`` (``git
    diff HEAD``), ``untracked.patch`` (each untracked, not ignored file as a
    ``git diff --no-index --binary`` from /dev/null), ``uv.lock`` (the nearest
    one up from the repo) and ``provenance.json``; the hashes are sha256 of
    those files. ``checkout git_head``, then ``git apply`` both patches,
    gives back the tree that ran.
    """

    repo_path: str
    git_head: str | None
    git_status_porcelain: str | None
    git_diff_head: str | None
    diff_hash: str | None
    uv_lock_hash: str | None
    uv_lock_path: str | None
    untracked_files_hash: str | None


def _git_bytes(path: Path, *args: str, ok: tuple[int, ...] = (0,)) -> bytes | None:
    try:
        proc = subprocess.run(["git", "-C", str(path), *args], capture_output=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode in ok else None


def _write(bundle: Path, name: str, data: bytes) -> str:
    (bundle / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def capture_provenance(source: Source, bundle: Path) -> RepoProvenance:
    """Write the provenance bundle of ``source`` into ``bundle`` and return what it holds."""
    root = Path(source.path)
    bundle.mkdir(parents=True, exist_ok=True)
    head = _git_bytes(root, "rev-parse", "HEAD")
    status = _git_bytes(root, "status", "--porcelain")
    diff = _git_bytes(root, "diff", "HEAD")
    if head is not None:
        _write(bundle, "git_head.txt", head.rstrip())
    if status is not None:
        _write(bundle, "git_status_porcelain.txt", status.rstrip())
    # Kept whole (the original trims the final newline): a patch without it does not `git apply`.
    diff_hash = _write(bundle, "tracked.patch", diff) if diff is not None else None
    lock = next((d / "uv.lock" for d in (root.resolve(), *root.resolve().parents) if (d / "uv.lock").is_file()), None)
    lock_hash = _write(bundle, "uv.lock", lock.read_bytes()) if lock is not None else None
    untracked_hash = None
    listed = _git_bytes(root, "ls-files", "-z", "--others", "--exclude-standard")
    if listed:
        patch = b"".join(
            _git_bytes(root, "diff", "--no-index", "--binary", "/dev/null", os.fsdecode(name), ok=(0, 1)) or b""
            for name in sorted(n for n in listed.split(b"\0") if n)
        )
        untracked_hash = _write(bundle, "untracked.patch", patch)

    def text(data: bytes | None) -> str | None:
        return None if data is None else data.decode(errors="replace").rstrip()

    provenance = RepoProvenance(
        repo_path=str(root),
        git_head=text(head),
        git_status_porcelain=text(status),
        git_diff_head=None if diff is None else diff.decode(errors="replace"),
        diff_hash=diff_hash,
        uv_lock_hash=lock_hash,
        uv_lock_path=str(lock) if lock is not None else None,
        untracked_files_hash=untracked_hash,
    )
    _write(bundle, "provenance.json", msgspec.json.format(msgspec.json.encode(provenance), indent=2))
    return provenance
