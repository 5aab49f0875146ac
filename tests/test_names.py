"""``inside``: a path whose directory resolves below its root passes; anything else is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labctl.names import OutsideRoot, inside
from labctl.realpath import realpath


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A root with a user's directory, a sibling sharing its name's prefix, and links in and out."""
    root = tmp_path / "root"
    (root / "alice" / "deep").mkdir(parents=True)
    (tmp_path / "rootx" / "alice").mkdir(parents=True)  # a sibling whose name starts with the root's
    os.symlink(tmp_path / "rootx", root / "out")  # climbs out to the sibling
    os.symlink(root / "alice", root / "in")  # stays inside
    os.symlink(root, tmp_path / "via")  # the whole root seen through a link
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    return root


def _by_components(root: str | Path, path: str | Path) -> bool:
    """The rule as whole path components: the directory resolved, then the last name as written."""
    p = Path(path)
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(p.parent)) / p.name
    return p.name not in ("", ".", "..") and real != real_root and real.is_relative_to(real_root)


ROOTS = ["{r}", "{r}/", "{t}/via", "{t}/root/../root", "{t}/rootx", "/", "{t}/missing"]
PATHS = [
    "{r}/alice/x",
    "{r}/alice",
    "{r}",
    "{r}/",
    "{r}/.",
    "{r}/alice/..",
    "{r}/alice/deep/x",
    "{r}/out/alice",
    "{r}/in/x",
    "{r}/out",
    "{t}/rootx/alice/x",
    "{t}/via/alice/x",
    "{r}/../rootx/x",
    "{r}//alice//x",
    "{r}/loop1/x",
    "{r}/missing/x/y",
    "{t}/missing/x",
    "/",
    "relative/x",
]


@pytest.mark.parametrize("root_t", ROOTS)
def test_inside_passes_exactly_the_paths_whose_directory_resolves_below_the_root(tree: Path, root_t: str) -> None:
    t = tree.parent
    root = root_t.format(r=tree, t=t)
    for path_t in PATHS:
        path = path_t.format(r=tree, t=t)
        if _by_components(root, path):
            assert inside(root, path) == Path(path), path
        else:
            with pytest.raises(OutsideRoot):
                inside(root, path)


def test_a_sibling_sharing_the_roots_name_as_a_prefix_is_outside(tree: Path) -> None:
    with pytest.raises(OutsideRoot):
        inside(tree, tree.parent / "rootx" / "alice" / "x")


def test_a_link_climbing_out_of_the_root_is_outside_and_one_staying_in_is_inside(tree: Path) -> None:
    with pytest.raises(OutsideRoot):
        inside(tree, tree / "out" / "alice")
    assert inside(tree, tree / "in" / "x") == tree / "in" / "x"
    assert realpath(tree / "in") == str(tree / "alice")


def test_the_root_itself_is_not_inside(tree: Path) -> None:
    for path in (tree, tree / "alice" / "..", tree.parent / "via"):
        with pytest.raises(OutsideRoot):
            inside(tree, path)
