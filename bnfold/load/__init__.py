"""Loading: every supported model file becomes a :class:`LoadedModel`.

Formats are detected by content, not by extension. Nothing here unpickles arbitrary objects: torch files
are read with ``weights_only=True``.
"""

from __future__ import annotations

from bnfold.load.inputs import InputSpec, load_data, make_inputs, parse_shape
from bnfold.load.model import LoadedModel, load_model, from_module

__all__ = ["InputSpec", "LoadedModel", "from_module", "load_data", "load_model", "make_inputs", "parse_shape"]
