"""Read a TOML file and decode it into a Struct, turning every failure into a FileFormatError."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from labctl.files.errors import FileFormatError

T = TypeVar("T")

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column \d+\)$")
_MSGSPEC_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]+)`$")

Part = str | int
_ANY_KEY = "[...]"  # how msgspec names "some key of this dict"


def beside(file: Path, value: str) -> Path:
    """Where a path written in ``file`` points: ``~`` expanded, relative to the directory of the
    file itself, links followed (a symlinked shared config keeps meaning what its owner wrote)."""
    return Path(os.path.normpath((file.resolve().parent / Path(value).expanduser()).absolute()))


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """The parsed table and the raw text of a TOML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileFormatError(path, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(path, "", f"cannot read file: {exc}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_POSITION.search(message)
        line = int(match.group(1)) if match else None
        if match:
            message = message[: match.start()]
        raise FileFormatError(path, "", f"invalid TOML: {message}", line=line) from None
    except RecursionError:
        raise FileFormatError(path, "", "invalid TOML: nested too deeply") from None


class UnknownKey(msgspec.Struct, frozen=True):
    """A key the schema does not know: where it is, and the known key it most looks like."""

    path: str
    line: int | None
    field: str
    suggestion: str | None

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        hint = f"; did you mean {self.suggestion}?" if self.suggestion else ""
        return f"{where}: {self.field}: unknown key, ignored{hint}"

    def error(self) -> FileFormatError:
        hint = f"; did you mean {self.suggestion}?" if self.suggestion else ""
        return FileFormatError(self.path, self.field, f"unknown key{hint}", line=self.line)


def strip_unknown_keys(
    raw: dict[str, Any], type_: type[Any], path: Path, text: str
) -> tuple[dict[str, Any], list[UnknownKey]]:
    """``raw`` without the keys ``type_`` does not know (at any depth), and one UnknownKey for each.

    Lets a file written for another version of labctl load, as the original
    labctl loads it (it ignores keys it does not know), while a typo is still
    reported with the key it was probably meant to be.
    """
    found: list[UnknownKey] = []

    def walk(value: Any, info: msgspec.inspect.Type, parts: list[Part]) -> Any:
        info = _pick_union_member(info, value)
        if isinstance(info, msgspec.inspect.StructType) and isinstance(value, dict):
            fields = {f.encode_name: f.type for f in info.fields}
            known = [*fields, *([info.tag_field] if info.tag_field else [])]
            kept = {}
            for key, item in value.items():
                if key in fields:
                    kept[key] = walk(item, fields[key], [*parts, key])
                elif key == info.tag_field:
                    kept[key] = item
                else:
                    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                    where = [*parts, key]
                    found.append(
                        UnknownKey(str(path), line_of(text, where), dotted(where), close[0] if close else None)
                    )
            return kept
        if isinstance(info, msgspec.inspect.DictType) and isinstance(value, dict):
            return {k: walk(v, info.value_type, [*parts, k]) for k, v in value.items()}
        if isinstance(info, msgspec.inspect.ListType) and isinstance(value, list):
            return [walk(v, info.item_type, [*parts, i]) for i, v in enumerate(value)]
        return value

    cleaned = walk(raw, msgspec.inspect.type_info(type_), [])
    return cleaned, found


def convert(raw: dict[str, Any], type_: type[T], path: Path, text: str) -> T:
    """Decode ``raw`` into ``type_``, or raise a FileFormatError naming the field."""
    try:
        return msgspec.convert(raw, type_)
    except msgspec.ValidationError as exc:
        parts, message = _locate(raw, type_, exc)
    field = dotted(parts)
    raise FileFormatError(path, field, message, line=line_of(text, parts)) from None


def dotted(parts: list[Part]) -> str:
    """``["outputs", "ckpt", "alias"]`` -> ``outputs.ckpt.alias``; list indices as ``[i]``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _BARE_KEY.match(part) else f'"{part}"'
            out += f".{key}" if out else key
    return out


def line_of(text: str, parts: list[Part]) -> int | None:
    """Best-effort line of a field in TOML text: the longest matching key or table header."""
    target = list(parts)
    best: tuple[int, int] | None = None  # (matched length, line)
    table: list[Part] = []
    array_counts: dict[tuple[Part, ...], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^(\[\[?)\s*([^\]]+?)\s*\]\]?", stripped)
        if header:
            keys: list[Part] = list(_split_key(header.group(2)))
            if header.group(1) == "[[":
                index = array_counts.get(tuple(keys), 0)
                array_counts[tuple(keys)] = index + 1
                keys.append(index)
            table = keys
            candidate = table
        else:
            assignment = re.match(r"^([A-Za-z0-9_\"'. -]+?)\s*=", stripped)
            if not assignment:
                continue
            candidate = table + list(_split_key(assignment.group(1)))
        length = _common_prefix(candidate, target)
        if length == len(candidate) and length > 0 and (best is None or length > best[0]):
            best = (length, number)
    return best[1] if best else None


def _split_key(key: str) -> list[str]:
    return [k.strip().strip("\"'") for k in key.split(".")]


def _common_prefix(a: list[Part], b: list[Part]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _parse(exc: msgspec.ValidationError) -> tuple[str, list[Part]]:
    match = _MSGSPEC_AT.match(str(exc))
    assert match is not None
    parts: list[Part] = []
    for name, index in _PATH_PART.findall(match.group("path") or ""):
        if name:
            parts.append(name)
        elif index == "...":
            parts.append(_ANY_KEY)
        else:
            parts.append(int(index))
    return match.group("message"), parts


def _locate(raw: dict[str, Any], type_: type[Any], exc: msgspec.ValidationError) -> tuple[list[Part], str]:
    """Full path and a readable message for a msgspec error.

    msgspec reports dict keys as ``[...]``; narrowing that dict to one entry at
    a time and converting again finds the key that fails.
    """
    message, parts = _parse(exc)
    while _ANY_KEY in parts:
        at = parts.index(_ANY_KEY)
        container = _get(raw, parts[:at])
        if not isinstance(container, dict):
            break
        for key, value in container.items():
            trial = _with(raw, parts[:at], {key: value})
            try:
                msgspec.convert(trial, type_)
            except msgspec.ValidationError as narrowed:
                message, new_parts = _parse(narrowed)
                raw = trial
                parts = [*parts[:at], key, *new_parts[at + 1 :]]
                break
        else:  # pragma: no cover - the whole failed, so one entry must fail
            break
    return _explain(message, parts, raw, type_)


def _explain(message: str, parts: list[Part], raw: Any, type_: type[Any]) -> tuple[list[Part], str]:
    if match := _MISSING.match(message):
        return [*parts, match.group(1)], "required field is missing"
    if match := _UNKNOWN.match(message):
        allowed = _allowed_fields(raw, type_, parts)
        expected = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return [*parts, match.group(1)], f"unknown field{expected}"
    if message.startswith("Invalid value") and parts and parts[-1] == "type":
        tags = _allowed_tags(raw, type_, parts[:-1])
        if tags:
            value = message.removeprefix("Invalid value ")
            return parts, f"{value} is not a known type; expected one of: {', '.join(tags)}"
    return parts, message[0].lower() + message[1:]


def _get(raw: Any, parts: list[Part]) -> Any:
    for part in parts:
        raw = raw[part]
    return raw


def _with(raw: Any, parts: list[Part], value: Any) -> Any:
    if not parts:
        return value
    head, rest = parts[0], parts[1:]
    if isinstance(raw, dict):
        copy: Any = dict(raw)
    else:
        copy = list(raw)
    copy[head] = _with(raw[head], rest, value)
    return copy


def _type_at(raw: Any, type_: type[Any], parts: list[Part]) -> msgspec.inspect.Type | None:
    """The msgspec type found by walking ``parts`` through the schema alongside the data."""
    info: msgspec.inspect.Type = msgspec.inspect.type_info(type_)
    for part in [*parts, None]:
        info = _pick_union_member(info, raw)
        if part is None:
            return info
        if isinstance(info, msgspec.inspect.StructType):
            fields = {f.encode_name: f.type for f in info.fields}
            if part not in fields:
                return None
            info = fields[part]
        elif isinstance(info, msgspec.inspect.DictType):
            info = info.value_type
        elif isinstance(info, msgspec.inspect.ListType):
            info = info.item_type
        else:
            return None
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return None
    return info  # pragma: no cover


def _pick_union_member(info: msgspec.inspect.Type, raw: Any) -> msgspec.inspect.Type:
    if not isinstance(info, msgspec.inspect.UnionType):
        return info
    members = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
    structs = [t for t in members if isinstance(t, msgspec.inspect.StructType)]
    if len(members) == 1:
        return members[0]
    if structs and isinstance(raw, dict) and structs[0].tag_field:
        for struct in structs:
            if struct.tag == raw.get(struct.tag_field):
                return struct
    return info


def _allowed_fields(raw: Any, type_: type[Any], parts: list[Part]) -> list[str]:
    info = _type_at(raw, type_, parts)
    if isinstance(info, msgspec.inspect.StructType):
        return [f.encode_name for f in info.fields]
    return []


def _allowed_tags(raw: Any, type_: type[Any], parts: list[Part]) -> list[str]:
    info = _type_at(raw, type_, parts)
    if isinstance(info, msgspec.inspect.UnionType):
        return [str(t.tag) for t in info.types if isinstance(t, msgspec.inspect.StructType) and t.tag is not None]
    return []
