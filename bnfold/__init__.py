"""bnfold: fold every BatchNorm out of a trained PyTorch model, export it to ONNX, and prove it.

The pipeline is the package layout: :mod:`~bnfold.load` → :mod:`~bnfold.fold` → :mod:`~bnfold.export` →
:mod:`~bnfold.verify` → :mod:`~bnfold.bench` → :mod:`~bnfold.report`; :func:`convert` runs it all.
"""

from __future__ import annotations

from bnfold.convert import ConvertConfig, ConvertResult, convert, inspect_model
from bnfold.errors import BnfoldError
from bnfold.fold import BnRecord, FoldResult, fold
from bnfold.load import LoadedModel, load_model

__all__ = [
    "BnRecord", "BnfoldError", "ConvertConfig", "ConvertResult", "FoldResult", "LoadedModel", "convert", "fold",
    "inspect_model", "load_model",
]
