"""Content and identity hashes of artifacts (LABCTL-FORMATS.md, "Artifacts on disk")."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from labctl.realpath import realpath

_CHUNK = 1 << 20  # 1 MiB: big enough that sha256 releases the GIL, small enough to stay in cache
# Files this small never release the GIL (hashlib keeps it below 2 KiB), so threads only
# contend over them: the calling thread hashes them while the pool hashes the rest.
_TINY_FILE = 16 << 10
# Other files go to the pool in batches: one task per 20 KiB file costs about as much as hashing it.
_BATCH_BYTES = 4 << 20
_BATCH_FILES = 128
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_buffers = threading.local()


def dir_content_hash(
    path: str | os.PathLike[str],
    *,
    exclude_top: Iterable[str] = (),
    workers: int | None = None,
) -> str:
    """Content hash of a directory tree, as labctl has always computed it.

    One line per regular file, ``<relative path>\\t<sha256 hex of its bytes>``;
    lines joined with ``\\n`` (no trailing newline); the result is the sha256
    hex of that text. Precisely:

    - Walk order: a depth-first pre-order walk in which the entries of every
      directory are sorted by their name (byte order of the file-system name).
      A sub-directory's files are listed at the sub-directory's place among
      its siblings, so ``a/b`` comes before ``a.txt`` (``"a" < "a.txt"``),
      although sorting whole paths would put ``a.txt`` first (``.`` < ``/``).
    - Relative paths use ``/`` and are taken relative to `path`. A name that
      is not UTF-8 is written as the original labctl's ``Path::display``
      writes it: each invalid byte sequence replaced by U+FFFD.
    - Symlinks inside the tree are neither followed nor listed; neither are
      sockets, FIFOs or devices. Directories add no lines of their own, so
      an empty directory contributes nothing. `path` itself is followed if it
      is a symlink.
    - A tree without regular files hashes to sha256 of the empty string.
    - If `path` is a regular file the walk yields the file itself, whose
      path relative to `path` is empty: one line ``\t<sha256 hex>``.
    - `exclude_top` names entries directly under `path` to leave out (for
      example ``.meta.json`` when re-verifying a stored object).

    File contents are hashed on a pool of `workers` threads (default: like
    ThreadPoolExecutor, cpu count + 4), which hashlib lets run in parallel;
    files under 16 KiB are hashed by the calling thread meanwhile, since they
    would only contend for the GIL. ``workers=1`` hashes everything in the
    calling thread. The result never depends on `workers`.
    """
    root = os.fspath(path)
    if os.path.isfile(root):
        files = [(b"", root, 0)]
    else:
        files = _regular_files(root, frozenset(os.fsencode(n) for n in exclude_top))
    digests = _hash_files(files, workers)
    lines = b"\n".join(
        _display(rel) + b"\t" + digest.encode() for (rel, _, _), digest in zip(files, digests, strict=True)
    )
    return hashlib.sha256(lines).hexdigest()


def _display(rel: bytes) -> bytes:
    """A relative path's bytes as the original hashes them (lossy UTF-8, as Rust's ``Path::display``)."""
    return rel.decode("utf-8", "replace").encode()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex of one file's bytes, read in 1 MiB chunks into a per-thread buffer."""
    buf: bytearray | None = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(_CHUNK)
    view = memoryview(buf)
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def path_identity_hash(path: str) -> str:
    """sha256 hex of the canonical path string (symlinks resolved, absolute, normalized).

    Used for checkpoint-stream steps and external artifacts, whose identity is
    where they are rather than what they hold.
    """
    return hashlib.sha256(os.fsencode(realpath(path))).hexdigest()


def artifact_id(content_hash: str) -> str:
    """``artifact_`` + the first 16 hex digits of the hash."""
    check_hash(content_hash)
    return "artifact_" + content_hash[:16]


def check_hash(content_hash: str) -> None:
    """Refuse anything that is not a lowercase 64-digit sha256 hex string."""
    if not _HASH_RE.match(content_hash):
        raise ValueError(f"not a sha256 hex digest: {content_hash!r}")


def _regular_files(root: str, exclude_top: frozenset[bytes]) -> list[tuple[bytes, str, int]]:
    """(relative path as bytes, absolute path, size) of every regular file, in walk order."""
    files: list[tuple[bytes, str, int]] = []
    top = [e for e in _sorted_entries(root) if os.fsencode(e.name) not in exclude_top]
    # Stack of (entry, relative path) popped in name order: a pre-order walk without recursion.
    pending = [(e, os.fsencode(e.name)) for e in reversed(top)]
    while pending:
        entry, rel = pending.pop()
        if entry.is_dir(follow_symlinks=False):
            children = _sorted_entries(entry.path)
            pending.extend((c, rel + b"/" + os.fsencode(c.name)) for c in reversed(children))
        elif entry.is_file(follow_symlinks=False):
            files.append((rel, entry.path, entry.stat(follow_symlinks=False).st_size))
    return files


def _sorted_entries(directory: str) -> list[os.DirEntry[str]]:
    with os.scandir(directory) as it:
        return sorted(it, key=lambda e: os.fsencode(e.name))


def _hash_files(files: list[tuple[bytes, str, int]], workers: int | None) -> list[str]:
    """Digests of the files, in order."""
    pooled = [(i, path, size) for i, (_, path, size) in enumerate(files) if size >= _TINY_FILE]
    if workers == 1 or not pooled:
        return [file_sha256(path) for _, path, _ in files]
    digests = [""] * len(files)
    batches: list[list[tuple[int, str]]] = [[]]
    batch_bytes = 0
    for i, path, size in pooled:
        if batches[-1] and (batch_bytes + size > _BATCH_BYTES or len(batches[-1]) >= _BATCH_FILES):
            batches.append([])
            batch_bytes = 0
        batches[-1].append((i, path))
        batch_bytes += size
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="labctl-hash") as pool:
        results = pool.map(_hash_batch, batches)  # submits every batch now
        for i, (_, path, size) in enumerate(files):
            if size < _TINY_FILE:
                digests[i] = file_sha256(path)
        for batch in results:
            for i, digest in batch:
                digests[i] = digest
    return digests


def _hash_batch(batch: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return [(i, file_sha256(path)) for i, path in batch]
