"""Model files to :class:`LoadedModel`: detect the format by content, then hand over to its reader."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from bnfold.errors import LoadError
from bnfold.load.detect import SUPPORTED, Detected, check_readable, detect_format
from bnfold.load.factory import ModelFactory, build_from_factory
from bnfold.load.loaded import LoadedModel, file_sha256
from bnfold.load.onnx_files import read_onnx
from bnfold.load.torch_files import read_exported, read_safetensors, read_torch_file, read_torchscript

__all__ = ["SUPPORTED", "LoadedModel", "build_from_factory", "file_sha256", "from_module", "load_model"]

_OWN_ARCHITECTURE = {"torch.export", "torchscript", "onnx"}


def from_module(module: nn.Module, example_inputs: tuple[Any, ...] | None = None) -> LoadedModel:
    """Wrap an in-memory ``nn.Module`` (the Python API's entry point)."""
    if not isinstance(module, nn.Module):
        raise LoadError(f"expected a torch.nn.Module, got {type(module).__name__}")
    inputs = None if example_inputs is None else tuple(example_inputs)
    return LoadedModel(format="module", module=module, example_inputs=inputs)


def load_model(
    path: str | Path,
    factory: str | ModelFactory | None = None,
    trust_code: bool = False,
    *,
    factory_args: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:
    """Read a model file of any supported format (detected by content; the file is never modified).

    ``factory`` ("package.module:callable") builds the module for weights-only files (state_dict,
    checkpoint, safetensors), called with the keyword arguments ``factory_args``. ``trust_code`` allows the
    formats that carry code (TorchScript archives, pickled modules) and lifts the loading gate; without it
    nothing from the file runs, and a file that would run something is refused. ``trust_pickle`` is the
    older name of ``trust_code``.
    """
    path = Path(path)
    trust_code = trust_code or trust_pickle
    factory = ModelFactory.of(factory, factory_args)
    check_readable(path)
    detected = detect_format(path)
    loaded = _read(path, detected, factory, trust_code)
    if factory is not None and detected.kind in _OWN_ARCHITECTURE:
        loaded.notes.append(f"--model {factory} not used: the file holds its own architecture")
    loaded.path, loaded.sha256 = path, file_sha256(path)
    return loaded


def _read(path: Path, detected: Detected, factory: ModelFactory | None, trust_code: bool) -> LoadedModel:
    if detected.kind == "torch.export":
        return read_exported(path, trust_code)
    if detected.kind == "torchscript":
        return read_torchscript(path, trust_code)
    if detected.kind == "onnx":
        assert detected.onnx_model is not None
        return read_onnx(path, detected.onnx_model)
    if detected.kind == "safetensors":
        return read_safetensors(path, factory)
    return read_torch_file(path, factory, trust_code)
