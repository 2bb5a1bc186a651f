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
        [sys.executable, "-m", "bnfold", *args], capture_output=True, text=True, cwd=cwd or ROOT, timeout=600,
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
