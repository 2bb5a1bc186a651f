"""bnfold: fold every BatchNorm out of a trained PyTorch model, export it to ONNX, and prove it.

The pipeline is the package layout: :mod:`~bnfold.load` → :mod:`~bnfold.fold` → :mod:`~bnfold.export` →
:mod:`~bnfold.verify` → :mod:`~bnfold.bench` → :mod:`~bnfold.report`; :func:`convert` runs it all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bnfold.convert import ConvertConfig, ConvertResult, convert, inspect_model
from bnfold.errors import BnfoldError
from bnfold.fold import BnRecord, FoldResult
from bnfold.load import LoadedModel, load_model
from bnfold.report.check import check_reports as check

# fold, verify and bench are subpackages that are also callable as their stage's function (bnfold._entry):
# bnfold.fold(model, inputs), bnfold.verify(original, candidate), bnfold.bench(models); type checkers are
# shown the functions.
if TYPE_CHECKING:
    from bnfold.bench import bench_models as bench
    from bnfold.fold import fold
    from bnfold.verify import verify_models as verify
else:
    from bnfold import bench, fold, verify

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
