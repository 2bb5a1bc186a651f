"""Shared fixtures: the repository's sample models and a CLI runner that behaves like the console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``bnfold ARGS`` in a fresh process, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "bnfold", *args], capture_output=True, text=True, cwd=cwd or ROOT, timeout=600
    )
