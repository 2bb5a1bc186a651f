"""A stage's subpackage is also its entry point: ``bnfold.fold(model, inputs)`` and ``bnfold.fold.maths``.

Each pipeline stage is a subpackage (``bnfold.fold``, ``bnfold.verify``, ``bnfold.bench``) whose main
function users call by the stage's name. A function bound over the name would hide the subpackage
(``import bnfold.fold.maths; bnfold.fold.maths`` would fail), so instead the subpackage itself is made
callable: calling it calls its entry point, and its submodules stay reachable.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any


class _StageModule(types.ModuleType):
    """A module that, called, calls its ``__entry__`` function."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__entry__(*args, **kwargs)


def make_callable(module_name: str, entry: Callable[..., Any]) -> None:
    """Make the module ``module_name`` callable as ``entry`` (its docstring and signature shown by help())."""
    module = sys.modules[module_name]
    module.__class__ = _StageModule
    module.__entry__ = entry  # type: ignore[attr-defined]
    module.__signature__ = _signature(entry)  # type: ignore[attr-defined]


def _signature(entry: Callable[..., Any]) -> Any:
    import inspect

    return inspect.signature(entry)
