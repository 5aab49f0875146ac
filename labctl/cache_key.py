"""What a run's cache key covers, computed at submission and explained on request.

The key is the sha256 of ``CacheKeyParts``: the canonical recipe, the repo's
commit and uncommitted changes, each input's content hash, and, for a recipe
without ``repo``, the content of every file its command names (its scripts).
An ``external`` input counts by the content of its files (a stored hash is
reused while every file's size, mtime and inode are unchanged, see
``labctl.fingerprints``), so appending to a dataset file makes a new key.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
import stat
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
import psycopg

from events.types import CacheKeyParts, InputRef
from labctl.artifacts import path_identity_hash
from labctl.files import Recipe, canonical_recipe_bytes
from labctl.fingerprints import Fingerprint, fingerprint
from labctl.provenance import Source
from labctl.realpath import realpath

_ENCODER = msgspec.json.Encoder(order="sorted")


class KeyParts(msgspec.Struct, kw_only=True):
    """The parts, and how each content hash was obtained (for ``--explain-cache``)."""

    parts: CacheKeyParts
    fingerprints: dict[str, Fingerprint] = {}  # role or file path -> how it was hashed

    @property
    def key(self) -> str:
        return key_of(self.parts)


def key_of(parts: CacheKeyParts) -> str:
    return hashlib.sha256(_ENCODER.encode(parts)).hexdigest()


def command_files(recipe: Recipe) -> list[str]:
    """Absolute paths of the existing regular files the command names: arguments, ``--k=v`` values,
    and the words of a ``bash -c`` script (``~`` expanded). Template tokens are never files."""
    found: list[str] = []
    for arg in [*recipe.command, *recipe.args.values()]:
        for candidate in _path_words(arg):
            path = os.path.expanduser(candidate)
            if os.path.isabs(path) and os.path.isfile(path):
                real = realpath(path)
                if real not in found:
                    found.append(real)
    return sorted(found)


@functools.lru_cache(maxsize=4096)  # a pipeline's runs repeat their commands: each script is split once
def _path_words(arg: str) -> tuple[str, ...]:
    """The words of one argument that can name a file: the argument, the words of its script when it has
    spaces or lines, and each one's ``=`` value; only those starting ``/`` or ``~`` (none with a token)."""
    words = [arg]
    if " " in arg or "\n" in arg:
        try:
            words += shlex.split(arg, comments=True)
        except ValueError:
            words += arg.split()
    candidates = (c for word in words for c in (word, word.partition("=")[2]))
    return tuple(c for c in candidates if c[:1] in ("/", "~") and "{" not in c)


class Lookups:
    """What ``key_parts`` asks the filesystem (and the stored fingerprints), asked afresh each time.

    ``Remembered`` answers each question once, for computing many keys at one moment (an import).
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def identity(self, path: str) -> str:
        return path_identity_hash(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def fingerprint(self, path: str) -> Fingerprint:
        return fingerprint(self.conn, path)

    def recipe(self, recipe: Recipe) -> tuple[str, list[str]]:
        """The hash of the canonical recipe, and the files its command names (without a repo)."""
        files = command_files(recipe) if recipe.repo is None else []
        return hashlib.sha256(canonical_recipe_bytes(recipe)).hexdigest(), files


class Remembered(Lookups):
    """``Lookups`` that answer each path (and each recipe object) once: thousands of imported runs share
    their inputs, scripts and recipes. A file changed while it is in use is not seen, so it is made for one
    batch of keys and dropped."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__(conn)
        self._identity: dict[str, str] = {}
        self._real: dict[str, str] = {}
        self._exists: dict[str, bool] = {}
        self._prints: dict[str, Fingerprint] = {}
        # By id(): the caller passes the same Recipe object for the same recipe; the object is kept so its
        # id is not reused.
        self._recipes: dict[int, tuple[Recipe, tuple[str, list[str]]]] = {}

    def identity(self, path: str) -> str:
        if (found := self._identity.get(path)) is None:
            found = self._identity[path] = hashlib.sha256(os.fsencode(self.realpath(path))).hexdigest()
        return found

    def realpath(self, path: str) -> str:
        """``os.path.realpath``, resolving each directory once: one lstat per new path instead of one per
        component (inputs share their parent directories)."""
        if (found := self._real.get(path)) is not None:
            return found
        head, name = os.path.split(path)
        if not head.startswith("/") or head == path or name in ("", ".", ".."):
            found = realpath(path)  # relative, the root, or not normalized: as realpath does it
        else:
            candidate = os.path.join(self.realpath(head), name)
            try:
                link = stat.S_ISLNK(os.lstat(candidate).st_mode)
            except OSError:
                link = False  # missing: kept as written, as realpath does
            found = realpath(candidate) if link else candidate
        self._real[path] = found
        return found

    def exists(self, path: str) -> bool:
        if (found := self._exists.get(path)) is None:
            found = self._exists[path] = super().exists(path)
        return found

    def fingerprint(self, path: str) -> Fingerprint:
        if (found := self._prints.get(path)) is None:
            found = self._prints[path] = super().fingerprint(path)
        return found

    def recipe(self, recipe: Recipe) -> tuple[str, list[str]]:
        if (found := self._recipes.get(id(recipe))) is None:
            found = self._recipes[id(recipe)] = (recipe, super().recipe(recipe))
        return found[1]


def key_parts(
    conn: psycopg.Connection[Any],
    recipe: Recipe,
    inputs: Sequence[InputRef],
    source: Source | None,
    lookups: Lookups | None = None,
) -> KeyParts:
    """The parts of the key of a run of ``recipe`` (unrendered) with these resolved inputs."""
    look = lookups or Lookups(conn)
    prints: dict[str, Fingerprint] = {}
    by_role: dict[str, str] = {}
    for ref in inputs:
        # Known only by its location: an external input, or an artifact whose recorded hash names its path.
        by_path = ref.type == "external" or (ref.type == "artifact" and ref.hash == look.identity(ref.path))
        if by_path and look.exists(ref.path):
            prints[ref.role] = look.fingerprint(ref.path)
            by_role[ref.role] = prints[ref.role].content_hash
        else:
            by_role[ref.role] = ref.hash or ref.path
    recipe_digest, command = look.recipe(recipe)
    files: dict[str, str] = {}
    for path in command:
        prints[path] = look.fingerprint(path)
        files[path] = prints[path].content_hash
    parts = CacheKeyParts(
        recipe=recipe_digest,
        source=source.fingerprint if source else None,
        inputs=by_role,
        files=files,
    )
    return KeyParts(parts=parts, fingerprints=prints)


def explain(
    key: str,
    parts: CacheKeyParts | None,
    *,
    fingerprints: dict[str, Fingerprint] | None = None,
    inputs: Sequence[InputRef] = (),
    repo: str | None = None,
) -> list[str]:
    """Lines naming each part of the key (what a change to would make a new key)."""
    lines = [f"cache key {key}"]
    if parts is None:
        return [*lines, "  (recorded before labctl kept the key's parts)"]
    prints = fingerprints or {}
    refs = {i.role: i for i in inputs}
    lines.append(f"  recipe  {parts.recipe[:16]}  command, params, args, env, inputs and outputs as written")
    if parts.source:
        commit, _, changes = parts.source.partition(":")
        state = f"uncommitted changes {changes[:16]}" if changes else "clean"
        lines.append(f"  source  {commit[:16]}  repo {repo or '?'} at this commit, {state}")
    elif repo is None:
        lines.append("  source  -  no repo: the files the command names stand for the code (below)")
    for role, digest in sorted(parts.inputs.items()):
        ref = refs.get(role)
        what = f"{ref.type} {ref.alias or ref.artifact_id or ref.path}" if ref else "input"
        lines.append(f"  input   {digest[:16]}  {role}: {what}{_how(prints.get(role))}")
    for path, digest in sorted(parts.files.items()):
        lines.append(f"  file    {digest[:16]}  {path}{_how(prints.get(path))}")
    return lines


def _how(fp: Fingerprint | None) -> str:
    from labctl.gc import human_bytes

    if fp is None:
        return ""
    size = f"{fp.files:,} file{'s' if fp.files != 1 else ''}, {human_bytes(fp.bytes)}"
    if fp.reused:
        return f" ({size}; content hash reused: sizes, mtimes and inodes unchanged)"
    return f" ({size}; content hashed now)"


def hit_line(producer: str, finished_at: datetime | None, status: str | None = None) -> str:
    """What a cache hit says: the run it reused and when that run ended."""
    when = finished_at.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z") if finished_at else "(end time unknown)"
    return f"cache hit: reused the outputs of {producer} ({status or 'succeeded'} {when})"
