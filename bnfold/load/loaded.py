"""The loader's result: what every model file becomes, whatever its format."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    import onnx


@dataclass
class LoadedModel:
    """A model ready for folding: a runnable module (or an ONNX graph), and example inputs if known.

    ``format`` is one of ``torch.export``, ``torchscript``, ``state_dict``, ``checkpoint``,
    ``safetensors``, ``pickle``, ``onnx`` (files) or ``module`` (in memory). ``module`` is None only for
    ``onnx``, where ``onnx_model`` holds the graph instead. ``notes`` say what the loader decided on the
    user's behalf (which checkpoint key, which prefix it stripped, which batch size it assumed).
    """

    format: str
    module: nn.Module | None
    example_inputs: tuple[torch.Tensor, ...] | None = None
    path: Path | None = None
    sha256: str | None = None
    exported: torch.export.ExportedProgram | None = None
    dynamic_batch: bool = False
    notes: list[str] = field(default_factory=list)
    onnx_model: onnx.ModelProto | None = None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def loaded_source(loaded: LoadedModel) -> Path | bytes:
    """A loaded ONNX model for onnxruntime: the file it was read from (a model past 2 GB cannot be serialised)."""
    if loaded.path is not None:
        return Path(loaded.path)
    if loaded.onnx_model is None:
        raise ValueError(f"a {loaded.format} model has no ONNX graph to run in onnxruntime")
    return bytes(loaded.onnx_model.SerializeToString())
