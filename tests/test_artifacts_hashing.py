"""dir_content_hash follows LABCTL-FORMATS.md "Artifacts on disk" to the byte."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from labctl.artifacts.hashing import artifact_id, dir_content_hash, path_identity_hash


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_hash_is_sha256_of_sorted_relative_path_tab_file_hash_lines(tmp_path: Path) -> None:
    _write(tmp_path / "b.bin", b"bee")
    _write(tmp_path / "a.txt", b"alpha")
    _write(tmp_path / "a" / "z.txt", b"zed")  # dir "a" sorts before file "a.txt"
    _write(tmp_path / "a" / "sub" / "deep", b"")
    (tmp_path / "empty").mkdir()
    expected_lines = [
        f"a/sub/deep\t{_sha(b'')}",
        f"a/z.txt\t{_sha(b'zed')}",
        f"a.txt\t{_sha(b'alpha')}",
        f"b.bin\t{_sha(b'bee')}",
    ]
    assert dir_content_hash(tmp_path) == _sha("\n".join(expected_lines).encode())


def test_walk_order_lists_a_subdirectory_at_its_name_not_by_full_path(tmp_path: Path) -> None:
    _write(tmp_path / "a-b", b"1")
    _write(tmp_path / "a" / "x", b"2")
    # Names: "a" < "a-b", so a/x comes first, although "a-b" < "a/x" as whole paths.
    lines = [f"a/x\t{_sha(b'2')}", f"a-b\t{_sha(b'1')}"]
    assert dir_content_hash(tmp_path) == _sha("\n".join(lines).encode())


def test_symlinks_inside_the_tree_are_not_followed_or_listed(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    _write(tree / "real", b"data")
    _write(tmp_path / "outside" / "secret", b"s")
    before = dir_content_hash(tree)
    os.symlink(tmp_path / "outside", tree / "linked_dir")
    os.symlink(tree / "real", tree / "linked_file")
    os.symlink(tree / "missing", tree / "dangling")
    assert dir_content_hash(tree) == before == _sha(f"real\t{_sha(b'data')}".encode())


def test_empty_directory_hashes_to_sha256_of_nothing(tmp_path: Path) -> None:
    (tmp_path / "only_dirs" / "nested").mkdir(parents=True)
    assert dir_content_hash(tmp_path) == _sha(b"")


def test_a_single_file_hashes_with_an_empty_relative_path_as_in_the_original(tmp_path: Path) -> None:
    _write(tmp_path / "d" / "model.pt", b"weights")
    assert dir_content_hash(tmp_path / "d" / "model.pt") == _sha(f"\t{_sha(b'weights')}".encode())
    assert dir_content_hash(tmp_path / "d") == _sha(f"model.pt\t{_sha(b'weights')}".encode())


def test_exclude_top_leaves_out_only_top_level_names(tmp_path: Path) -> None:
    _write(tmp_path / "x", b"x")
    clean = dir_content_hash(tmp_path)
    _write(tmp_path / ".meta.json", b"{}")
    _write(tmp_path / "sub" / ".meta.json", b"{}")
    with_nested = dir_content_hash(tmp_path, exclude_top=(".meta.json",))
    assert with_nested != clean
    (tmp_path / "sub" / ".meta.json").unlink()
    assert dir_content_hash(tmp_path, exclude_top=(".meta.json",)) == clean


def test_parallel_hash_equals_sequential_hash_on_200_files(tmp_path: Path) -> None:
    for i in range(200):
        _write(tmp_path / f"d{i % 7}" / f"f{i:03d}", os.urandom(i * 97 + (1 << 20 if i == 5 else 0)))
    sequential = dir_content_hash(tmp_path, workers=1)
    assert dir_content_hash(tmp_path, workers=8) == sequential
    assert dir_content_hash(tmp_path) == sequential


def test_a_changed_byte_changes_the_hash(tmp_path: Path) -> None:
    _write(tmp_path / "f", b"a" * 3_000_000)
    before = dir_content_hash(tmp_path)
    _write(tmp_path / "f", b"a" * 2_999_999 + b"b")
    assert dir_content_hash(tmp_path) != before


def test_path_identity_hash_is_sha256_of_the_canonical_path(tmp_path: Path) -> None:
    real = tmp_path / "ckpt" / "step100"
    real.mkdir(parents=True)
    os.symlink(tmp_path / "ckpt", tmp_path / "via_link")
    canonical = os.path.realpath(real)
    assert path_identity_hash(str(real)) == _sha(canonical.encode())
    assert path_identity_hash(str(tmp_path / "via_link" / "step100")) == _sha(canonical.encode())


def test_artifact_id_is_prefix_and_first_16_hex_digits() -> None:
    h = _sha(b"x")
    assert artifact_id(h) == "artifact_" + h[:16]


def test_the_import_s_remembered_path_identity_equals_path_identity_hash(tmp_path: Path) -> None:
    """An import resolves each directory once (``Remembered``); the identity it gets must be the one
    ``submit`` computes, or a recipe that succeeded under the original would not be a cache hit here."""
    from labctl.cache_key import Remembered

    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    os.symlink(tmp_path / "a" / "b", tmp_path / "abs_link")
    os.symlink("b/c", tmp_path / "a" / "rel_link")
    os.symlink("../..", tmp_path / "a" / "b" / "c" / "up")
    paths = [
        "a/b/c/x",
        "abs_link/c/y",
        "a/rel_link/z",
        "a/b/c/up/b/c",
        "missing/m/n",
        "a/../a/b",
        "a//b/",
        "a/./b",
        "abs_link",
    ]
    remembered = Remembered(None)  # type: ignore[arg-type]  # no fingerprint is asked for
    for rel in paths * 2:  # the second time from memory
        path = f"{tmp_path}/{rel}"
        assert remembered.identity(path) == path_identity_hash(path), rel
    assert remembered.identity("relative/x") == path_identity_hash("relative/x")
