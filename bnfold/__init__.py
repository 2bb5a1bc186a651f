"""bnfold: fold every BatchNorm out of a trained PyTorch model, export it to ONNX, and prove it.

The pipeline is the package layout: :mod:`~bnfold.load` → :mod:`~bnfold.fold` → :mod:`~bnfold.export` →
:mod:`~bnfold.verify` → :mod:`~bnfold.bench` → :mod:`~bnfold.report`; :func:`convert` runs it all.
Names are imported on first use, so that ``import bnfold`` (and ``bnfold check``) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bnfold.errors import BnfoldError

if TYPE_CHECKING:
    from bnfold.convert import ConvertConfig, ConvertResult, convert, inspect_model
    from bnfold.fold import BnRecord, FoldResult, fold
    from bnfold.load import LoadedModel, load_model

_HOMES = {
    "ConvertConfig": "bnfold.convert", "ConvertResult": "bnfold.convert", "convert": "bnfold.convert",
    "inspect_model": "bnfold.convert", "BnRecord": "bnfold.fold", "FoldResult": "bnfold.fold", "fold": "bnfold.fold",
    "LoadedModel": "bnfold.load", "load_model": "bnfold.load",
}

__all__ = [
    "BnRecord", "BnfoldError", "ConvertConfig", "ConvertResult", "FoldResult", "LoadedModel", "convert", "fold",
    "inspect_model", "load_model",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'bnfold' has no attribute {name!r}")
