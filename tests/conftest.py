"""Shared fixtures: the repository's sample models and a CLI runner that behaves like the console script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
STAGE_LINE = re.compile(r"^(load|fold\+export|parity|latency|reports) +\d+\.\d\d s  \S.*$")
"""A line progress prints off a terminal when a stage ends: ``parity        1.84 s  checking parity ...``."""


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``bnfold ARGS`` in a fresh process, as a user would run it (this checkout's bnfold, from any ``cwd``)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "bnfold", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=600,
        env={**os.environ, "PYTHONPATH": path},
    )


def run_main(*args: str) -> int:
    """``bnfold ARGS`` in this process (fast: torch is already imported); returns the exit code. Capture
    the output with ``capfd``."""
    from bnfold.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    raise AssertionError("bnfold.cli.main returned without exiting")


def run_in_process(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``bnfold ARGS`` in this process, run from ``cwd``, with what it writes to stdout and stderr captured at
    the file-descriptor level too (library log lines included) — what :func:`run_cli` returns, in a fraction
    of the time (torch is already imported). For single-threaded test code: it moves the process's cwd."""
    import contextlib
    import io
    import tempfile

    from bnfold.cli import main

    texts = {"out": io.StringIO(), "err": io.StringIO()}
    with tempfile.TemporaryFile() as fd_out, tempfile.TemporaryFile() as fd_err, contextlib.ExitStack() as stack:
        saved = [os.dup(1), os.dup(2)]
        previous = Path.cwd()
        stack.enter_context(contextlib.redirect_stdout(texts["out"]))
        stack.enter_context(contextlib.redirect_stderr(texts["err"]))
        os.dup2(fd_out.fileno(), 1)
        os.dup2(fd_err.fileno(), 2)
        try:
            os.chdir(cwd or ROOT)
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            os.chdir(previous)
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
        fd_out.seek(0)
        fd_err.seek(0)
        out = texts["out"].getvalue() + fd_out.read().decode(errors="replace")
        err = texts["err"].getvalue() + fd_err.read().decode(errors="replace")
    return subprocess.CompletedProcess(list(args), code, out, err)


def snapshot(directory: Path) -> dict[str, str]:
    """Every path under ``directory`` (hidden ones too) with its content hash (or its kind)."""
    import hashlib

    def content(p: Path) -> str:
        if p.is_symlink():
            return f"<link {p.readlink()}>"
        if p.is_dir():
            return "<dir>"
        if not p.is_file():
            return "<special>"
        return hashlib.sha256(p.read_bytes()).hexdigest()

    return {str(p.relative_to(directory)): content(p) for p in sorted(directory.rglob("*"))}
