"""Model files to :class:`LoadedModel`: detect the format by content, then hand over to its reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from bnfold.errors import LoadError
from bnfold.load.detect import SUPPORTED, Detected, check_readable, detect_format
from bnfold.load.factory import build_from_factory
from bnfold.load.loaded import LoadedModel, file_sha256
from bnfold.load.onnx_files import read_onnx
from bnfold.load.torch_files import (
    read_exported,
    read_pickle,
    read_safetensors,
    read_torch_weights,
    read_torchscript,
)

__all__ = ["SUPPORTED", "LoadedModel", "build_from_factory", "file_sha256", "from_module", "load_model"]

_OWN_ARCHITECTURE = {"torch.export", "torchscript", "onnx"}


def from_module(module: nn.Module, example_inputs: tuple[Any, ...] | None = None) -> LoadedModel:
    """Wrap an in-memory ``nn.Module`` (the Python API's entry point)."""
    if not isinstance(module, nn.Module):
        raise LoadError(f"expected a torch.nn.Module, got {type(module).__name__}")
    inputs = None if example_inputs is None else tuple(example_inputs)
    return LoadedModel(format="module", module=module, example_inputs=inputs)


def load_model(path: str | Path, factory: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Read a model file of any supported format (detected by content; the file is never modified).

    ``factory`` ("package.module:callable") builds the module for weights-only files (state_dict,
    checkpoint, safetensors). ``trust_pickle`` allows unpickling a whole pickled model, which runs code
    from the file; without it such files are refused before anything in them is executed.
    """
    path = Path(path)
    check_readable(path)
    detected = detect_format(path)
    loaded = _read(path, detected, factory, trust_pickle)
    if factory is not None and detected.kind in _OWN_ARCHITECTURE:
        loaded.notes.append(f"--model {factory} not used: the file holds its own architecture")
    loaded.path, loaded.sha256 = path, file_sha256(path)
    return loaded


def _read(path: Path, detected: Detected, factory: str | None, trust_pickle: bool) -> LoadedModel:
    if detected.kind == "torch.export":
        return read_exported(path, detected.code_globals, trust_pickle)
    if detected.kind == "torchscript":
        return read_torchscript(path)
    if detected.kind == "onnx":
        assert detected.onnx_model is not None
        return read_onnx(path, detected.onnx_model)
    if detected.kind == "safetensors":
        return read_safetensors(path, factory)
    if detected.kind == "pickle":
        return read_pickle(path, detected.code_globals, factory, trust_pickle)
    return read_torch_weights(path, factory, trust_pickle)
