"""The content-addressed artifact store on disk: `_objects/`, `.meta.json`, alias symlinks.

Filesystem only; recording artifacts and aliases as events is the caller's job.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import msgspec

from labctl.artifacts.atomic import atomic_write_bytes
from labctl.artifacts.hashing import check_hash, dir_content_hash
from labctl.names import check_name, inside
from labctl.realpath import realpath

OBJECTS_DIRNAME = "_objects"
ALIASES_DIRNAME = "aliases"
META_FILENAME = ".meta.json"


class ArtifactMeta(msgspec.Struct, kw_only=True):
    """`.meta.json`, written inside the object directory beside the bytes."""

    id: str
    hash: str
    kind: str
    producer_run_id: str | None = None
    created_by: str
    created_at: str  # ISO 8601
    alias: str | None = None
    metadata: dict[str, Any] = {}  # e.g. {"step": 9000} or {"result": {...}}
    source_path: str


class HashMismatch(ValueError):
    """Bytes that do not hash to the hash they are filed under (a lying manifest, or a changed object)."""


def object_dir(root: str | os.PathLike[str], content_hash: str) -> Path:
    """`<root>/_objects/<hash[:2]>/<hash>`."""
    check_hash(content_hash)
    return Path(root) / OBJECTS_DIRNAME / content_hash[:2] / content_hash


def alias_link_path(root: str | os.PathLike[str], user: str, alias: str) -> Path:
    """`<root>/aliases/<user>/<alias>`."""
    check_name("user name", user)
    check_name("alias", alias)
    return inside(root, Path(root) / ALIASES_DIRNAME / user / alias)


def store_output(
    root: str | os.PathLike[str],
    src_dir: str | os.PathLike[str],
    content_hash: str,
    meta: ArtifactMeta,
) -> Path:
    """Move `src_dir` into the store as the object `content_hash`; returns the object dir.

    - The bytes move once: os.rename on the same file system, else copy then
      remove the source. They first land under a temp name inside `_objects/`
      with `.meta.json` already written, then one rename puts the complete
      object in place, so a visible object always has its metadata.
    - If the object already exists (the same kind and hash again, or a
      concurrent store winning the race), the new copy is dropped and the
      existing object, with its `.meta.json`, is kept.
    - `src_dir` is left behind as a relative symlink to the object, so paths
      into the run's output location keep resolving (re-hashing through it
      needs ``exclude_top=(".meta.json",)``, as for the object itself).
    - The caller vouches for `content_hash` (see dir_content_hash) for a new
      object. Before dropping `src_dir` in favour of an existing object, both
      are re-hashed: the hash may come from a file the job's user can rewrite
      (`.lab/output_hashes.json`), and another user's artifact must never end
      up pointing at different bytes. A mismatch raises HashMismatch and
      leaves `src_dir` in place. A top-level `.meta.json` in `src_dir` is
      refused, because the store owns that name.
    """
    src = Path(src_dir)
    dest = object_dir(root, content_hash)
    if src.is_symlink() and src.resolve() == dest.resolve() and dest.is_dir():
        return dest  # stored already, by an earlier call
    if not src.is_dir() or src.is_symlink():
        raise NotADirectoryError(f"{src}: an output to store must be a directory")
    if os.path.lexists(src / META_FILENAME):
        raise ValueError(f"{src}: contains {META_FILENAME}, a name the artifact store reserves")
    objects = Path(root) / OBJECTS_DIRNAME
    objects.mkdir(parents=True, exist_ok=True)
    if dest.is_dir():
        _check_duplicate(root, src, content_hash)
        _replace_with_link(src, dest)
        return dest
    tmp = objects / f".tmp-{content_hash[:16]}-{uuid.uuid4().hex}"
    copied = _move_or_copy(src, tmp)
    try:
        _write_meta_file(tmp, meta)
        dest.parent.mkdir(exist_ok=True)
        os.rename(tmp, dest)
    except OSError as e:
        _undo_move(tmp, src, copied)
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY) and dest.is_dir():
            _check_duplicate(root, src, content_hash)
            _replace_with_link(src, dest)  # lost a race to an identical object
            return dest
        raise
    if copied:
        shutil.rmtree(src)
    _link(src, dest)
    return dest


def _check_duplicate(root: str | os.PathLike[str], src: Path, content_hash: str) -> None:
    """Both copies really are ``content_hash`` before one is dropped for the other."""
    actual = dir_content_hash(src)
    if actual != content_hash:
        raise HashMismatch(
            f"{src}: its bytes hash to {actual}, not to {content_hash} as recorded (was .lab/output_hashes.json "
            "rewritten?); not registered"
        )
    if not verify_object(root, content_hash):
        raise HashMismatch(
            f"the stored object {object_dir(root, content_hash)} no longer matches its hash; not deduplicated "
            "onto it (see labctl audit objects)"
        )


def root_of_object(path: str | os.PathLike[str], content_hash: str) -> Path | None:
    """``<root>`` when ``path`` is ``<root>/_objects/<hash[:2]>/<hash>`` (bytes labctl moved in), else None."""
    p = Path(path)
    if p.name != content_hash or p.parent.name != content_hash[:2] or p.parent.parent.name != OBJECTS_DIRNAME:
        return None
    return p.parent.parent.parent


def read_meta(root: str | os.PathLike[str], content_hash: str) -> ArtifactMeta:
    path = object_dir(root, content_hash) / META_FILENAME
    return msgspec.json.decode(path.read_bytes(), type=ArtifactMeta)


def write_meta(root: str | os.PathLike[str], content_hash: str, meta: ArtifactMeta) -> None:
    """Rewrite an existing object's `.meta.json` atomically."""
    _write_meta_file(object_dir(root, content_hash), meta)


def verify_object(root: str | os.PathLike[str], content_hash: str) -> bool:
    """True when the object exists and its bytes (without `.meta.json`) still hash to its name."""
    directory = object_dir(root, content_hash)
    if not directory.is_dir() or directory.is_symlink():
        return False
    return dir_content_hash(directory, exclude_top=(META_FILENAME,)) == content_hash


def remove_object(root: str | os.PathLike[str], content_hash: str) -> bool:
    """Delete an object (gc); False if it was not there.

    It is renamed to a trash name first, so a half-deleted object is never
    found under its hash.
    """
    directory = object_dir(root, content_hash)
    trash = Path(root) / OBJECTS_DIRNAME / f".trash-{content_hash[:16]}-{uuid.uuid4().hex}"
    try:
        os.rename(directory, trash)
    except FileNotFoundError:
        return False
    shutil.rmtree(trash)
    return True


def set_alias_link(
    root: str | os.PathLike[str],
    user: str,
    alias: str,
    target_object_dir: str | os.PathLike[str],
) -> Path:
    """Point `<root>/aliases/<user>/<alias>` at an object with a relative symlink.

    An existing link is replaced atomically (new link under a temp name, then
    os.replace), so readers always find the old or the new target. User and
    alias are single path components: letters, digits, `.`, `_`, `-`, not
    starting with `.` or `-` (rendered aliases such as `train_run_x` fit).
    """
    link = alias_link_path(root, user, alias)
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{alias}.tmp-{uuid.uuid4().hex}")
    os.symlink(_relative_target(target_object_dir, link.parent), tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return link


def remove_alias_link(root: str | os.PathLike[str], user: str, alias: str) -> bool:
    """Remove the alias symlink; False if there was none. Never touches the object."""
    link = alias_link_path(root, user, alias)
    if not link.is_symlink():
        if os.path.lexists(link):
            raise ValueError(f"{link}: not a symlink, refusing to remove")
        return False
    link.unlink()
    return True


def _move_or_copy(src: Path, dest: Path) -> bool:
    """Rename `src` to `dest`; across file systems copy instead. True if it copied."""
    try:
        os.rename(src, dest)
        return False
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    try:
        shutil.copytree(src, dest, symlinks=True)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return True


def _undo_move(tmp: Path, src: Path, copied: bool) -> None:
    """Put the source back as it was after a failed store."""
    if copied:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    (tmp / META_FILENAME).unlink(missing_ok=True)
    os.rename(tmp, src)


def _write_meta_file(directory: Path, meta: ArtifactMeta) -> None:
    data = msgspec.json.format(msgspec.json.encode(meta), indent=2)
    atomic_write_bytes(directory / META_FILENAME, data)


def _replace_with_link(src: Path, dest: Path) -> None:
    """Drop the duplicate at `src` and leave a link to `dest` in its place."""
    trash = src.with_name(f".{src.name}.dropped-{uuid.uuid4().hex}")
    os.rename(src, trash)  # keeps the window without anything at `src` short
    _link(src, dest)
    shutil.rmtree(trash)


def _link(src: Path, dest: Path) -> None:
    os.symlink(_relative_target(dest, src.parent), src)


def _relative_target(target: str | os.PathLike[str], link_dir: Path) -> str:
    # Physical paths: the kernel resolves `..` in a link from the real directory it sits in.
    return os.path.relpath(realpath(target), realpath(link_dir))
