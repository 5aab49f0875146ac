"""The on-disk store: objects move in once, carry .meta.json, and aliases are relative links."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from labctl.artifacts.hashing import artifact_id, dir_content_hash
from labctl.artifacts.store import (
    ArtifactMeta,
    object_dir,
    read_meta,
    remove_alias_link,
    remove_object,
    set_alias_link,
    store_output,
    verify_object,
)


def _output(path: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def _meta(content_hash: str, source: Path, **extra: object) -> ArtifactMeta:
    return ArtifactMeta(
        id=artifact_id(content_hash),
        hash=content_hash,
        kind="dataset",
        producer_run_id="run_abc",
        created_by="alice",
        created_at="2026-01-01T00:00:00+00:00",
        alias="mnist",
        metadata={"step": 3, **extra},
        source_path=str(source),
    )


def test_store_moves_the_output_into_objects_and_leaves_a_relative_link(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    src = _output(tmp_path / "out" / "alice" / "prep", {"a.txt": b"a", "sub/b": b"b"})
    h = dir_content_hash(src)
    stored = store_output(root, src, h, _meta(h, src))
    assert stored == object_dir(root, h) == root / "_objects" / h[:2] / h
    assert (stored / "sub" / "b").read_bytes() == b"b"
    assert src.is_symlink() and not os.path.isabs(os.readlink(src))
    assert src.resolve() == stored.resolve()
    assert (src / "a.txt").read_bytes() == b"a"
    assert dir_content_hash(src, exclude_top=(".meta.json",)) == h
    assert [p.name for p in (root / "_objects").iterdir()] == [h[:2]]  # no temp dirs left


def test_meta_json_sits_beside_the_bytes_and_decodes(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    src = _output(tmp_path / "out", {"x": b"x"})
    h = dir_content_hash(src)
    store_output(root, src, h, _meta(h, src, result={"acc": 0.9}))
    raw = (object_dir(root, h) / ".meta.json").read_bytes()
    meta = msgspec.json.decode(raw, type=ArtifactMeta)
    assert meta == read_meta(root, h) == _meta(h, src, result={"acc": 0.9})
    assert meta.id == "artifact_" + h[:16]


def test_storing_the_same_hash_again_drops_the_new_copy_and_keeps_the_first(
    tmp_path: Path,
) -> None:
    root = tmp_path / "artifacts"
    first = _output(tmp_path / "run1" / "out", {"w": b"same"})
    second = _output(tmp_path / "run2" / "out", {"w": b"same"})
    h = dir_content_hash(first)
    stored = store_output(root, first, h, _meta(h, first))
    inode = (stored / "w").stat().st_ino
    assert store_output(root, second, h, _meta(h, second)) == stored
    assert (stored / "w").stat().st_ino == inode
    assert read_meta(root, h).source_path == str(first)
    assert second.is_symlink() and second.resolve() == stored.resolve()
    assert sorted(p.name for p in second.parent.iterdir()) == ["out"]  # no dropped copy left


def test_storing_an_already_stored_output_again_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    src = _output(tmp_path / "out", {"x": b"x"})
    h = dir_content_hash(src)
    stored = store_output(root, src, h, _meta(h, src))
    assert store_output(root, src, h, _meta(h, src)) == stored
    assert verify_object(root, h)


def test_an_output_with_its_own_top_level_meta_json_is_refused_untouched(tmp_path: Path) -> None:
    src = _output(tmp_path / "out", {".meta.json": b"{}"})
    h = dir_content_hash(src)
    with pytest.raises(ValueError, match="reserves"):
        store_output(tmp_path / "artifacts", src, h, _meta(h, src))
    assert src.is_dir() and not src.is_symlink()


def test_verify_object_catches_a_changed_byte(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    src = _output(tmp_path / "out", {"data.bin": b"0123456789", "n/m": b"m"})
    h = dir_content_hash(src)
    stored = store_output(root, src, h, _meta(h, src))
    assert verify_object(root, h)
    (stored / "data.bin").write_bytes(b"0123456789"[:-1] + b"X")
    assert not verify_object(root, h)


def test_verify_object_is_false_for_a_missing_object(tmp_path: Path) -> None:
    assert not verify_object(tmp_path, "0" * 64)


def test_alias_link_is_relative_resolves_and_is_replaced(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    objs = []
    for i in range(2):
        src = _output(tmp_path / f"out{i}", {"v": str(i).encode()})
        h = dir_content_hash(src)
        objs.append(store_output(root, src, h, _meta(h, src)))
    link = set_alias_link(root, "alice", "train_run_x", objs[0])
    assert link == root / "aliases" / "alice" / "train_run_x"
    assert not os.path.isabs(os.readlink(link))
    assert (link / "v").read_bytes() == b"0"
    set_alias_link(root, "alice", "train_run_x", objs[1])
    assert (link / "v").read_bytes() == b"1"
    assert sorted(p.name for p in link.parent.iterdir()) == ["train_run_x"]
    assert remove_alias_link(root, "alice", "train_run_x")
    assert not os.path.lexists(link) and objs[1].is_dir()
    assert not remove_alias_link(root, "alice", "train_run_x")


@pytest.mark.parametrize("alias", ["", "a/b", "..", ".hidden", "-x", "a b"])
def test_alias_names_that_are_not_one_plain_path_component_are_refused(tmp_path: Path, alias: str) -> None:
    with pytest.raises(ValueError, match="alias"):
        set_alias_link(tmp_path, "alice", alias, tmp_path)


def test_remove_object_deletes_it_and_leaves_no_trash(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    src = _output(tmp_path / "out", {"x": b"x"})
    h = dir_content_hash(src)
    store_output(root, src, h, _meta(h, src))
    assert remove_object(root, h)
    assert not object_dir(root, h).exists()
    assert [p.name for p in (root / "_objects").iterdir()] == [h[:2]]
    assert list((root / "_objects" / h[:2]).iterdir()) == []
    assert not remove_object(root, h)
