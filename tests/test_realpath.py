"""labctl.realpath answers exactly what os.path.realpath answers, whichever way it finds the answer."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from labctl import realpath as fast


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small tree of directories, files and links of every awkward kind, under a linked root."""
    real = tmp_path / "real"
    (real / "a" / "b").mkdir(parents=True)
    (real / "a" / "b" / "file").write_text("x")
    (real / "a" / "space dir (deleted)").mkdir()
    os.symlink(real, tmp_path / "root")  # the whole tree seen through a link
    os.symlink("b", real / "a" / "rel")  # relative link
    os.symlink(real / "a" / "b" / "file", real / "abs")  # absolute link to a file
    os.symlink("../rel/file", real / "a" / "b" / "up")  # '..' and a link inside a link's target
    os.symlink("nowhere", real / "dangling")
    os.symlink("loop2", real / "loop1")
    os.symlink("loop1", real / "loop2")
    os.mkfifo(real / "fifo")
    return tmp_path / "root"


CASES = [
    "",
    "a",
    "a/b/file",
    "a/rel/file",
    "a/rel/../b",
    "abs",
    "a/b/up",
    "a/space dir (deleted)",
    "dangling",
    "dangling/deeper",
    "loop1",
    "loop1/x",
    "missing/x/y",
    "a/b/file/not-a-dir",
    "fifo",
    "a//b/./file/",
]


@pytest.mark.parametrize("case", CASES)
def test_every_awkward_path_resolves_as_os_path_realpath_does(tree: Path, case: str) -> None:
    path = f"{tree}/{case}" if case else str(tree)
    assert fast.realpath(path) == os.path.realpath(path)
    assert fast.realpath(Path(path)) == os.path.realpath(path)


def test_a_relative_path_resolves_from_the_working_directory(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree / "a")
    for case in ("rel/file", ".", "..", "b/up", "nothing"):
        assert fast.realpath(case) == os.path.realpath(case)


def test_the_kernel_answers_an_existing_path_without_walking_it(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the module: where /proc can answer, Python's component-by-component walk is not run."""
    if not fast._FAST:
        pytest.skip("no O_PATH or /proc/self/fd on this system")
    expected, missing = os.path.realpath(tree / "a" / "b" / "file"), os.path.realpath(tree / "missing")
    walked: list[str] = []
    real = os.path.realpath

    def walk(path: str, **kw: bool) -> str:
        walked.append(str(path))
        return real(path, **kw)

    monkeypatch.setattr(os.path, "realpath", walk)
    assert fast.realpath(tree / "a" / "b" / "up") == expected
    assert walked == []
    assert fast.realpath(tree / "missing") == missing
    assert walked == [str(tree / "missing")]


def _resolve_outcome(resolve: Callable[[str], str], path: str) -> str:
    try:
        return resolve(path)
    except (OSError, RuntimeError) as exc:  # a link loop: RuntimeError before Python 3.13, OSError since
        return type(exc).__name__


@pytest.mark.parametrize("case", CASES)
def test_resolved_answers_what_path_resolve_answers(tree: Path, case: str) -> None:
    path = f"{tree}/{case}" if case else str(tree)
    assert _resolve_outcome(fast.resolved, path) == _resolve_outcome(lambda p: str(Path(p).resolve()), path)
