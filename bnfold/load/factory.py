"""``--model package.module:callable``: the user's code that builds the architecture for a weights file.

``--model-arg NAME=VALUE`` (repeatable) passes keyword arguments to it, each value read as a Python literal
(``10``, ``True``, ``(3, 224)``, ``'a b'``) or, when it is none, as the string itself (``resnet18``).
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from bnfold.errors import LoadError, one_line


def cwd_importable() -> None:
    """Let ``package.module`` resolve from the current directory, as ``python -m`` would."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))


@dataclass(frozen=True)
class ModelFactory:
    """``package.module:callable`` and the keyword arguments to call it with."""

    spec: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, factory: str | ModelFactory | None, kwargs: Mapping[str, Any] | None = None) -> ModelFactory | None:
        """Normalise what the API accepts: a spec string (with ``kwargs``), a factory, or None."""
        if factory is None:
            if kwargs:
                raise LoadError("--model-arg needs --model package.module:callable to pass the arguments to")
            return None
        if isinstance(factory, ModelFactory):
            return factory
        return cls(factory, tuple((kwargs or {}).items()))

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs)
        return f"{self.spec}({args})" if args else self.spec

    def build(self) -> nn.Module:
        return build_from_factory(self.spec, dict(self.kwargs))


def parse_model_args(texts: Iterable[str]) -> dict[str, Any]:
    """``NAME=VALUE`` strings as keyword arguments: a Python literal, or else the text as a string."""
    kwargs: dict[str, Any] = {}
    for text in texts:
        name, equals, value = text.partition("=")
        if not equals or not name.strip().isidentifier():
            raise LoadError(f"--model-arg {text!r}: expected NAME=VALUE, e.g. num_classes=10")
        try:
            kwargs[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            kwargs[name.strip()] = value
    return kwargs


def build_from_factory(spec: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Import ``package.module:callable`` (the current directory is searched too) and call it with ``kwargs``."""
    kwargs = dict(kwargs or {})
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
        built = target(**kwargs)
    except Exception as exc:
        needs = "with the --model-arg values given" if kwargs else "with no arguments (or give --model-arg)"
        raise LoadError(
            f"--model {spec}: calling it failed ({one_line(exc)}); it must build the model {needs}"
        ) from exc
    if not isinstance(built, nn.Module):
        raise LoadError(f"--model {spec} returned a {type(built).__name__}, not a torch.nn.Module")
    return built
