"""``workers.workdir.inside``: the one helper every worker path goes through refuses any
path that is not below its root, however it is spelled."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from shared.entities import check_class_name, check_class_names, check_split_name
from workers.failures import FailureReason, WorkerFailure
from workers.workdir import MAX_DEPTH, inside


def test_relative_parts_land_below_the_root(tmp_path):
    assert inside(tmp_path, "canonical", "train/part-00000.parquet") == tmp_path / "canonical" / "train" / "part-00000.parquet"
    assert inside(tmp_path, PurePosixPath("a/b")) == tmp_path / "a" / "b"
    assert inside(tmp_path, ".fill-x", "a..b") == tmp_path / ".fill-x" / "a..b"


@pytest.mark.parametrize(
    "parts",
    [
        ("..",),
        ("../x",),
        ("a/../../x",),
        ("/etc/passwd",),
        ("a", "/abs"),
        ("",),
        ("a//b",),
        ("./a",),
        ("a\\..\\b",),
        ("a\x00b",),
        ("x" * 256,),
        ("/".join(["d"] * (MAX_DEPTH + 1)),),
    ],
)
def test_anything_else_is_refused(tmp_path, parts):
    with pytest.raises(WorkerFailure) as info:
        inside(tmp_path, *parts)
    assert info.value.reason == FailureReason.unsafe_path


def test_a_symbolic_link_out_of_the_root_is_refused(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, root / "link")
    with pytest.raises(WorkerFailure):
        inside(root, "link", "file")
    assert inside(root, "plain", "file") == root / "plain" / "file"


def test_split_names_follow_the_api_rule():
    for good in ("train", "test", "validation", "a..b", "A-1_b.c", "x" * 63):
        assert check_split_name(good) == good
    for bad in ("", ".", "..", "../x", "/x", "a/b", ".hidden", "-x", "x-", "x" * 64, "a b", "train\n", "ü", None, 1):
        with pytest.raises(ValueError):
            check_split_name(bad)  # type: ignore[arg-type]


def test_class_names_are_bounded_printable_text():
    for good in ("cat", "golden retriever", "tench, Tinca tinca", "０", "x" * 256):
        assert check_class_name(good) == good
    for bad in ("", "   ", "a\nb", "tab\there", "nul\x00", "x" * 257, 3):
        with pytest.raises(ValueError):
            check_class_name(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="twice"):
        check_class_names(["a", "a"])
    with pytest.raises(ValueError, match="more than the limit"):
        check_class_names([str(i) for i in range(10_001)])
    with pytest.raises(ValueError, match="total"):
        check_class_names([f"{i:04d}" + "x" * 250 for i in range(1100)])


def test_nothing_is_written_outside_by_the_path_it_refuses(tmp_path):
    root = tmp_path / "work"
    root.mkdir()
    with pytest.raises(WorkerFailure):
        inside(root, "../escaped").write_text("x")
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["work"]
