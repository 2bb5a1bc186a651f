"""Model files to :class:`LoadedModel`: format detection and the per-format readers."""

from __future__ import annotations

import hashlib
import importlib
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnfold.errors import LoadError, one_line

SUPPORTED = (
    "a torch.export archive (.pt2), or a state_dict (.pt/.pth) with --model package.module:factory"
)


@dataclass
class LoadedModel:
    """A model ready for folding: a runnable module, and the example inputs that define its input spec."""

    format: str
    module: nn.Module | None
    example_inputs: tuple[torch.Tensor, ...] | None = None
    path: Path | None = None
    sha256: str | None = None
    exported: torch.export.ExportedProgram | None = None
    dynamic_batch: bool = False
    notes: list[str] = field(default_factory=list)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def from_module(module: nn.Module, example_inputs: tuple[Any, ...] | None = None) -> LoadedModel:
    """Wrap an in-memory ``nn.Module`` (the Python API's entry point)."""
    if not isinstance(module, nn.Module):
        raise LoadError(f"expected a torch.nn.Module, got {type(module).__name__}")
    inputs = None if example_inputs is None else tuple(example_inputs)
    return LoadedModel(format="module", module=module, example_inputs=inputs)


def load_model(path: str | Path, factory: str | None = None) -> LoadedModel:
    """Read a model file; ``factory`` ("package.module:callable") builds the module for a state_dict."""
    path = Path(path)
    _check_readable(path)
    loaded = _read(path, factory)
    loaded.path, loaded.sha256 = path, file_sha256(path)
    return loaded


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise LoadError(f"{path}: no such file")
    if path.is_dir():
        raise LoadError(f"{path} is a directory: give the model file itself ({SUPPORTED})")
    if path.stat().st_size == 0:
        raise LoadError(f"{path} is empty: give {SUPPORTED}")


def _read(path: Path, factory: str | None) -> LoadedModel:
    if not zipfile.is_zipfile(path):
        raise LoadError(f"{path} is not a model file bnfold can read: give {SUPPORTED}")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(name.endswith("models/model.json") or "/serialized_exported_program" in name for name in names):
        return _read_exported(path)
    return _read_state_dict(path, factory)


def _read_exported(path: Path) -> LoadedModel:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # a damaged archive raises many kinds of errors
        raise LoadError(f"{path}: cannot read the torch.export archive ({one_line(exc)})") from exc
    example = program.example_inputs
    args = tuple(example[0]) if example else None
    return LoadedModel(
        format="torch.export",
        module=program.module(),
        example_inputs=args,
        exported=program,
        dynamic_batch=_has_dynamic_batch(program),
    )


def _has_dynamic_batch(program: torch.export.ExportedProgram) -> bool:
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            value = node.meta.get("val")
            if isinstance(value, torch.Tensor) and value.dim() > 0 and not isinstance(value.shape[0], int):
                return True
    return False


def _read_state_dict(path: Path, factory: str | None) -> LoadedModel:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LoadError(f"{path}: not a torch.export archive nor a weights-only torch file ({one_line(exc)})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LoadError(f"{path}: holds a {type(state).__name__}, not a state_dict of tensors")
    if factory is None:
        raise LoadError(
            f"{path} is a state_dict: it holds weights but no architecture; "
            "name the code that builds the model with --model package.module:factory"
        )
    module = build_from_factory(factory)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise LoadError(f"{path} does not fit the model built by {factory}: {one_line(exc)}") from exc
    return LoadedModel(format="state_dict", module=module)


def build_from_factory(spec: str) -> nn.Module:
    """Import ``package.module:callable`` (the current directory is searched too) and call it."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise LoadError(f"--model {spec!r}: expected the form package.module:callable")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        owner = importlib.import_module(module_name)
    except Exception as exc:
        raise LoadError(f"--model {spec}: cannot import {module_name} ({one_line(exc)})") from exc
    target = getattr(owner, attribute, None)
    if target is None or not callable(target):
        raise LoadError(f"--model {spec}: {module_name} has no callable named {attribute}")
    try:
        built = target()
    except Exception as exc:
        raise LoadError(f"--model {spec}: calling it failed ({one_line(exc)})") from exc
    if not isinstance(built, nn.Module):
        raise LoadError(f"--model {spec} returned a {type(built).__name__}, not a torch.nn.Module")
    return built
