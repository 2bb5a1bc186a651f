"""bnfold: fold every BatchNorm out of a trained PyTorch model, export it to ONNX, and prove it.

The pipeline is the package layout: :mod:`~bnfold.load` → :mod:`~bnfold.fold` → :mod:`~bnfold.export` →
:mod:`~bnfold.verify` → :mod:`~bnfold.bench` → :mod:`~bnfold.report`; :func:`convert` runs it all.

The names below are imported when first used (PEP 562), so that ``import bnfold.cli`` does not import torch:
the command line answers ``--help`` and usage errors at once, and a Ctrl-C while torch loads is handled as
any other. ``convert``, ``fold``, ``verify`` and ``bench`` are subpackages that are also callable as their
stage's function (:mod:`bnfold._entry`): ``bnfold.fold(model, inputs)``; type checkers are shown the functions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bnfold.bench import bench_models as bench
    from bnfold.convert import ConvertConfig, ConvertResult, convert, inspect_model
    from bnfold.errors import BnfoldError
    from bnfold.fold import BnRecord, FoldResult, fold
    from bnfold.load import LoadedModel, load_model
    from bnfold.report.check import check_reports as check
    from bnfold.verify import verify_models as verify

_WHERE = {
    "BnRecord": ("bnfold.fold", "BnRecord"),
    "BnfoldError": ("bnfold.errors", "BnfoldError"),
    "ConvertConfig": ("bnfold.convert", "ConvertConfig"),
    "ConvertResult": ("bnfold.convert", "ConvertResult"),
    "FoldResult": ("bnfold.fold", "FoldResult"),
    "LoadedModel": ("bnfold.load", "LoadedModel"),
    "check": ("bnfold.report.check", "check_reports"),
    "inspect_model": ("bnfold.convert", "inspect_model"),
    "load_model": ("bnfold.load", "load_model"),
}
_STAGES = ("bench", "convert", "fold", "verify")  # callable subpackages

__all__ = [
    "BnRecord",
    "BnfoldError",
    "ConvertConfig",
    "ConvertResult",
    "FoldResult",
    "LoadedModel",
    "bench",
    "check",
    "convert",
    "fold",
    "inspect_model",
    "load_model",
    "verify",
]


def __getattr__(name: str) -> Any:
    if name in _STAGES:
        return importlib.import_module(f"bnfold.{name}")  # importing it binds it here too
    if name not in _WHERE:
        raise AttributeError(f"module 'bnfold' has no attribute {name!r}")
    module, attribute = _WHERE[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
