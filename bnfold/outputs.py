"""The file contract: what a run writes never touches what it reads, and is replaced as one set.

* :func:`check_plan` runs before any work: every path the run will write is a regular file or nothing
  yet, in a writable directory, and none of them is a file the run reads or another output -- compared
  by resolved path and by file identity (symlinks, hard links).
* :class:`OutputSet` stages every output in a folder beside its target (``.bnfold-staging-<pid>-...``: the
  same file system, so moving into place is a rename), then moves the whole set into place with SIGINT and
  SIGTERM held back, restoring the previous files if a move fails. Whatever stops the run earlier leaves
  the previous outputs as they were; the staging folder goes with the run (or, after a SIGKILL, with the
  next run into the same directory, which recognises it by its dead owner's pid).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from bnfold.errors import OutputError, one_line

STAGING_PREFIX = ".bnfold-staging-"
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def check_plan(writes: Mapping[str, Path], reads: Mapping[str, Path]) -> None:
    """Raise :class:`OutputError` unless every output can be written without destroying anything.

    ``writes`` maps an option the user recognises (``"-o"``) to a path, ``reads`` a phrase (``"the --data
    file"``) to a path.
    """
    for label, path in writes.items():
        check_target(label, path)
    for label, path in writes.items():
        for other, source in reads.items():
            if same_file(path, source):
                raise OutputError(
                    f"{shown(label, path)} is {other} ({source}), which bnfold reads: choose another output path"
                )
    labels = list(writes)
    for i, label in enumerate(labels):
        for other in labels[i + 1 :]:
            if same_file(writes[label], writes[other]):
                raise OutputError(
                    f"{shown(other, writes[other])} is the same file as {shown(label, writes[label])}: "
                    "give each output its own name"
                )


def shown(label: str, path: Path) -> str:
    """A labelled path in a message: ``-o out.onnx``, or ``the external data of -o out.onnx (out.onnx.data)``
    for a file named by what it belongs to."""
    return f"{label} ({path})" if label.startswith("the external data of") else f"{label} {path}"


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same resolved path, or (both existing) the same inode."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
        return Path(a).exists() and Path(b).exists() and os.path.samefile(a, b)
    except (OSError, RuntimeError):  # a symlink loop, a name too long: check_target reports those
        return False


def check_target(label: str, path: Path) -> None:
    """``path`` is absent or a regular file (following symlinks), in an existing directory, its name within
    the file system's limit."""
    directory = path.parent
    if not directory.is_dir():
        what = "does not exist; create it first" if not directory.exists() else "is not a directory"
        raise OutputError(f"cannot write {shown(label, path)}: the directory {directory} {what}")
    limit = _name_max(directory)
    if len(os.fsencode(path.name)) > limit:
        raise OutputError(
            f"{label} {path.name[:40]}...: the file name is longer than this file system allows "
            f"({limit} bytes); choose a shorter name"
        )
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise OutputError(
            f"{shown(label, path)}: cannot write it ({one_line(exc)}): choose another output path"
        ) from None
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputError(f"{shown(label, path)} is a directory: give a file name for the output")
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputError(
            f"{shown(label, path)} exists and is not a regular file ({_kind(mode)}): bnfold only "
            "replaces regular files; choose another output path"
        )


def _kind(mode: int) -> str:
    kinds = [
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "a special file")


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


class OutputSet:
    """The outputs of one run, staged together and moved into place together.

    ``stage(target)`` is where to write ``target`` now; :meth:`commit` moves every staged file into place
    and removes the targets of the set that were not staged this time (a ``.data`` file an earlier run
    left beside a model that is now one file). Use it as a context manager: leaving it without a commit
    removes the staging folders and leaves the previous outputs untouched.
    """

    def __init__(self, targets: list[Path]) -> None:
        self.targets = list(dict.fromkeys(Path(t) for t in targets))
        self._folders: dict[Path, Path] = {}

    def __enter__(self) -> OutputSet:
        try:
            for target in self.targets:
                self._folder(target.parent)
        except BaseException:
            self.discard()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.discard()

    def stage(self, target: Path) -> Path:
        """The staged path of ``target`` (one of the set's targets)."""
        target = Path(target)
        if target not in self.targets:
            raise ValueError(f"{target} is not an output of this set")
        return self._folder(target.parent) / target.name

    def commit(self) -> list[Path]:
        """Move the staged files into place (signals held back meanwhile); returns the targets written."""
        staged = [(self.stage(t), t) for t in self.targets]
        for source, target in staged:
            if source.exists():
                settle(source, target)
        with _signals_held():
            return self._swap(staged)

    def discard(self) -> None:
        """Remove the staging folders with whatever is still in them (a signal waits till they are gone)."""
        with _signals_held():
            for folder in self._folders.values():
                shutil.rmtree(folder, ignore_errors=True)
            self._folders.clear()

    def _folder(self, directory: Path) -> Path:
        key = directory.resolve()
        if key not in self._folders:
            remove_stale_staging(directory)
            try:
                with _signals_held():  # made and recorded as one step: a signal between would orphan it
                    self._folders[key] = Path(tempfile.mkdtemp(dir=directory, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
            except OSError as exc:
                raise OutputError(f"cannot write to {directory} ({one_line(exc)}): choose another output path") from exc
        return self._folders[key]

    def _swap(self, staged: list[tuple[Path, Path]]) -> list[Path]:
        done: list[tuple[Path, Path | None]] = []
        written = []
        try:
            for source, target in staged:
                backup = self._backup(target)
                if source.exists():
                    os.replace(source, target)
                    written.append(target)
                elif backup is not None:
                    os.unlink(target)
                else:
                    continue
                done.append((target, backup))
        except OSError as exc:
            _restore(done)
            raise OutputError(
                f"cannot move the outputs into place ({one_line(exc)}); the previous ones are kept"
            ) from exc
        return written

    def _backup(self, target: Path) -> Path | None:
        """A hard link to the previous ``target`` in its staging folder, to restore it if the set fails."""
        if not target.is_file():
            return None
        backup = self._folder(target.parent) / f"{target.name}.previous"
        try:
            os.link(target, backup)
        except OSError:
            shutil.copy2(target, backup)
        return backup


def settle(source: Path, target: Path) -> None:
    """Flush ``source`` to disk and give it ``target``'s permissions (or the usual ones for a new file)."""
    try:
        with source.open("rb+") as handle:
            os.fsync(handle.fileno())
        mode = target.stat().st_mode & 0o777 if target.is_file() else 0o666 & ~_umask()
        os.chmod(source, mode)
    except OSError as exc:
        raise OutputError(f"cannot write {target} ({one_line(exc)})") from exc


def _restore(done: list[tuple[Path, Path | None]]) -> None:
    for target, backup in reversed(done):
        with contextlib.suppress(OSError):
            if backup is not None:
                os.replace(backup, target)
            else:
                os.unlink(target)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait (they are delivered on leaving) while the set is moved into place."""
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    except (AttributeError, OSError, ValueError):  # no pthread_sigmask on this platform
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def remove_stale_staging(directory: Path) -> None:
    """Remove staging folders in ``directory`` whose owning process is gone (a run killed with SIGKILL)."""
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return
    for entry in entries:
        pid = _owner(entry.name)
        if pid is not None and pid != os.getpid() and not _alive(pid) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _owner(name: str) -> int | None:
    if not name.startswith(STAGING_PREFIX):
        return None
    pid = name[len(STAGING_PREFIX) :].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def out_of_space_said(output: Path | None = None) -> Iterator[None]:
    """A file system that fills up while outputs are written (an ONNX file, its weights, a report) is the
    user's to fix, not a bug: an :class:`~bnfold.errors.OutputError` saying so, in one line, naming the
    folder of ``output`` (or the file being written)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        where = output.parent if output is not None else Path(exc.filename).parent if exc.filename else None
        place = f"the file system of {where.resolve()}" if where is not None else "the file system written to"
        raise OutputError(
            f"{place} ran out of space while the outputs were written ({exc.strerror}): "
            "free some space there or write the outputs elsewhere"
        ) from exc
