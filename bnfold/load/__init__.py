"""Loading: every supported model file becomes a :class:`LoadedModel`.

Formats are detected by content, not by extension (:mod:`bnfold.load.detect`). Nothing is unpickled in
full unless the user trusts the file: torch files are scanned statically, then read with
``weights_only=True``.
"""

from __future__ import annotations

from bnfold.load.detect import SUPPORTED
from bnfold.load.factory import build_from_factory
from bnfold.load.inputs import InputSpec, load_data, make_inputs, parse_shape
from bnfold.load.loaded import LoadedModel
from bnfold.load.model import from_module, load_model

__all__ = [
    "SUPPORTED",
    "InputSpec",
    "LoadedModel",
    "build_from_factory",
    "from_module",
    "load_data",
    "load_model",
    "make_inputs",
    "parse_shape",
]
