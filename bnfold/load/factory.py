"""``--model package.module:callable``: the user's code that builds the architecture for a weights file."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from torch import nn

from bnfold.errors import LoadError, one_line


def cwd_importable() -> None:
    """Let ``package.module`` resolve from the current directory, as ``python -m`` would."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))


def build_from_factory(spec: str) -> nn.Module:
    """Import ``package.module:callable`` (the current directory is searched too) and call it."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise LoadError(f"--model {spec}: expected the form package.module:callable, e.g. models.arch:build")
    cwd_importable()
    try:
        owner = importlib.import_module(module_name)
    except Exception as exc:
        raise LoadError(
            f"--model {spec}: cannot import {module_name} ({one_line(exc)}): run bnfold from the directory "
            "that holds it, or add that directory to PYTHONPATH"
        ) from exc
    target = getattr(owner, attribute, None)
    if target is None or not callable(target):
        raise LoadError(f"--model {spec}: {module_name} has no callable named {attribute!r}")
    try:
        built = target()
    except Exception as exc:
        raise LoadError(
            f"--model {spec}: calling it failed ({one_line(exc)}); it must build the model with no arguments"
        ) from exc
    if not isinstance(built, nn.Module):
        raise LoadError(f"--model {spec} returned a {type(built).__name__}, not a torch.nn.Module")
    return built
