"""Content hashes of files a run reads outside labctl's store (``external`` inputs, scripts a command names).

Hashing every byte on every submission would cost minutes for a large dataset,
so a hash is kept with a *stat digest* of the tree (each regular file's path,
size, mtime and inode): while none of those changed, the stored content hash is
reused; when any did, the whole tree is hashed again. A file whose mtime is
within ``RACY_SECONDS`` of the hashing is not trusted to its stat (it could
change again within the same clock tick), so such a tree is hashed every time
until it settles, as git does for racily clean files.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import msgspec
import psycopg

from events.queries import load_queries
from labctl.artifacts.hashing import dir_content_hash
from labctl.realpath import realpath

QUERIES = load_queries("labctl", "artifacts.sql")

RACY_SECONDS = 2.0


class TreeStat(msgspec.Struct, frozen=True, kw_only=True):
    digest: str
    files: int
    bytes: int
    newest_mtime_ns: int


class Fingerprint(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    content_hash: str
    files: int
    bytes: int
    reused: bool  # sizes and mtimes unchanged since the stored hash: no byte was read


def tree_stat(path: str) -> TreeStat:
    """One digest over the path, size, mtime and inode of every regular file under ``path`` (or of ``path``)."""
    root = realpath(path)
    if os.path.isfile(root):
        st = os.stat(root)
        line = f".\t{st.st_size}\t{st.st_mtime_ns}\t{st.st_ino}"
        return TreeStat(
            digest=hashlib.sha256(line.encode()).hexdigest(), files=1, bytes=st.st_size, newest_mtime_ns=st.st_mtime_ns
        )
    lines: list[str] = []
    total = newest = 0
    pending = [(root, "")]
    while pending:  # one stat per file (the walk's own syscalls aside); nothing is opened
        directory, rel = pending.pop()
        with os.scandir(directory) as it:
            entries = sorted(it, key=_name)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append((entry.path, f"{rel}{entry.name}/"))
            elif entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                lines.append(f"{rel}{entry.name}\t{st.st_size}\t{st.st_mtime_ns}\t{st.st_ino}")
                total += st.st_size
                if st.st_mtime_ns > newest:
                    newest = st.st_mtime_ns
    digest = hashlib.sha256("\n".join(lines).encode(errors="surrogateescape")).hexdigest()
    return TreeStat(digest=digest, files=len(lines), bytes=total, newest_mtime_ns=newest)


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


def fingerprint(conn: psycopg.Connection[Any], path: str) -> Fingerprint:
    """The content hash of the file or tree at ``path``, reusing the stored one while its stat digest holds."""
    real = realpath(path)
    before = tree_stat(real)
    row = conn.execute(QUERIES["stored_fingerprint"], {"path": real, "stat_digest": before.digest}).fetchone()
    if row is not None:
        return Fingerprint(path=real, content_hash=row[0], files=before.files, bytes=before.bytes, reused=True)
    started = time.time_ns()
    content = dir_content_hash(real)
    after = tree_stat(real)
    settled = after.digest == before.digest and after.newest_mtime_ns < started - int(RACY_SECONDS * 1e9)
    if settled:
        conn.execute(
            QUERIES["store_fingerprint"],
            {
                "path": real,
                "stat_digest": after.digest,
                "content_hash": content,
                "files": after.files,
                "bytes": after.bytes,
            },
        )
    return Fingerprint(path=real, content_hash=content, files=after.files, bytes=after.bytes, reused=False)
