"""Writing outputs safely: check early, write to a temporary file beside the target, rename into place.

A crash, a full disk or an exception half-way never leaves a truncated output where the user expects a
good one, and never overwrites the input the output was made from.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bnfold.errors import OutputError, one_line


def check_writable(path: str | Path) -> None:
    """Raise :class:`OutputError` now if ``path`` cannot be written, before any expensive work.

    The directory must exist and accept a new file (tried for real: permission bits do not stop root,
    and a read-only mount does not show in them); ``path`` itself must not be a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a directory: give a file name for the output")
    directory = _directory_of(path)
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write to {directory} ({one_line(exc)}): choose another output path") from exc


def ensure_distinct(input_path: str | Path, output_path: str | Path) -> None:
    """Raise :class:`OutputError` if writing ``output_path`` would overwrite ``input_path``."""
    source, target = Path(input_path), Path(output_path)
    same = source.resolve() == target.resolve()
    if not same and source.exists() and target.exists():
        same = os.path.samefile(source, target)  # hard links
    if same:
        raise OutputError(f"the output {target} is the input file itself: choose another output path")


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``: renamed over ``path`` on success, removed on any exception."""
    path = Path(path)
    check_writable(path)
    try:
        handle, name = tempfile.mkstemp(dir=_directory_of(path), prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({one_line(exc)}): choose another output path") from exc
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        _finish(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (readers see the old file or the new one, never a part)."""
    with atomic_output(path) as temporary:
        temporary.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode(encoding))


def _directory_of(path: Path) -> Path:
    directory = path.parent
    if not directory.exists():
        raise OutputError(f"cannot write {path}: the directory {directory} does not exist; create it first")
    if not directory.is_dir():
        raise OutputError(f"cannot write {path}: {directory} is not a directory")
    return directory


def _finish(temporary: Path, path: Path) -> None:
    """Flush to disk, give the usual permissions (mkstemp makes 0600), and rename over the target."""
    from bnfold.outputs import settle

    settle(temporary, path)
    try:
        os.replace(temporary, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({one_line(exc)})") from exc
