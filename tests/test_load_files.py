"""bnfold.files: outputs appear whole or not at all, bad places fail early, inputs are never overwritten."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bnfold.errors import OutputError
from bnfold.files import atomic_output, atomic_write_bytes, atomic_write_text, check_writable, ensure_distinct


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_atomic_write_bytes_and_text(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.json", '{"é": 1}')
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.json").read_text(encoding="utf-8") == '{"é": 1}'
    assert leftovers(tmp_path) == []


def test_atomic_output_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with atomic_output(target) as temporary:
        assert temporary.parent == tmp_path and temporary != target
        temporary.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # nothing visible until the block succeeds
    assert target.read_bytes() == b"new" and leftovers(tmp_path) == []


def test_atomic_output_removes_the_temporary_on_error(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="export failed"), atomic_output(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("export failed")
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_new_files_get_ordinary_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.json", "{}")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644


def test_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "absent" / "model.onnx"
    with pytest.raises(OutputError, match=r"the directory .*absent does not exist; create it first"):
        check_writable(target)
    with pytest.raises(OutputError, match="does not exist"), atomic_output(target):
        pytest.fail("the block must not run")


def test_directory_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "somefile"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError, match="somefile is not a directory"):
        check_writable(blocker / "out.onnx")
    with pytest.raises(OutputError, match="is not a directory"):
        atomic_write_bytes(blocker / "out.onnx", b"x")


def test_output_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="is a directory: give a file name"):
        check_writable(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="cannot write to .*locked"):
        check_writable(locked / "model.onnx")


def test_check_writable_leaves_nothing_behind(tmp_path: Path) -> None:
    check_writable(tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_ensure_distinct(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"model")
    ensure_distinct(source, tmp_path / "model.folded.onnx")
    with pytest.raises(OutputError, match="is the input file itself"):
        ensure_distinct(source, tmp_path / "." / "model.onnx")
    (tmp_path / "link.onnx").symlink_to(source)
    with pytest.raises(OutputError, match="is the input file itself"):
        ensure_distinct(source, tmp_path / "link.onnx")
    os.link(source, tmp_path / "hard.onnx")
    with pytest.raises(OutputError, match="is the input file itself"):
        ensure_distinct(source, tmp_path / "hard.onnx")
