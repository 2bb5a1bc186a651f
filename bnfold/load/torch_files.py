"""Readers for torch's own files: torch.export and TorchScript archives, torch.save weights, pickled modules.

Weights are read with ``weights_only=True`` (torch's restricted unpickler). A pickled module is only
unpickled in full when the user says they trust it; otherwise the refusal names the safe formats.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnfold.errors import LoadError, one_line
from bnfold.load.factory import cwd_importable
from bnfold.load.loaded import LoadedModel
from bnfold.load.weights import CHECKPOINT_KEYS, find_weights, module_with_weights

SAFE_FORMATS = (
    "torch.export.save (.pt2), torch.save(model.state_dict()) used with --model package.module:factory, "
    "or safetensors"
)
_TRUSTED = "unpickled in full as trusted (--trust-pickle), running what it refers to"
_UNTRUSTED = (
    "loading it would run code from the file. If you trust where it came from, pass --trust-pickle "
    "(trust_pickle=True); better,"
)


def read_exported(path: Path, code: Iterable[str] = (), trust_pickle: bool = False) -> LoadedModel:
    """A torch.export archive: the program, its module, and the example inputs stored with it.

    ``code``: what its pickled parts would import (see :mod:`bnfold.load.export_scan`); refused unless
    trusted, since ``torch.export.load`` would run it.
    """
    code = list(code)
    if code and not trust_pickle:
        raise LoadError(
            f"{path} is a torch.export archive whose pickled parts refer to {_describe(code)}; "
            f"{_UNTRUSTED} re-export it from the model with torch.export.save"
        )
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
        notes=[f"{_TRUSTED} ({_describe(code)})"] if code else [],
    )


def _has_dynamic_batch(program: torch.export.ExportedProgram) -> bool:
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            value = node.meta.get("val")
            if isinstance(value, torch.Tensor) and value.dim() > 0 and not isinstance(value.shape[0], int):
                return True
    return False


def read_torchscript(path: Path) -> LoadedModel:
    """A torch.jit.save archive, loaded onto the CPU; it stores no example inputs."""
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise LoadError(f"{path}: cannot read the TorchScript archive ({one_line(exc)})") from exc
    notes = ["TorchScript archives store no example inputs"] + _mode_notes(module)
    return LoadedModel(format="torchscript", module=module, notes=notes)


def read_torch_weights(path: Path, factory: str | None, trust_pickle: bool) -> LoadedModel:
    """A torch.save file of plain data: a state_dict, or a training checkpoint holding one."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # the restricted unpickler refused what the static scan let pass
        return read_pickle(path, ["objects torch's weights-only loader refuses"], factory, trust_pickle, exc)
    except Exception as exc:
        raise LoadError(
            f"{path}: cannot read the torch file ({one_line(exc)}): copy or save it again"
        ) from exc
    state, key, notes = find_weights(obj, path)
    what = "a state_dict" if key is None else f"a training checkpoint (weights under {key!r})"
    module, more = module_with_weights(state, factory, path, what)
    return LoadedModel(
        format="state_dict" if key is None else "checkpoint", module=module, notes=notes + more
    )


def read_safetensors(path: Path, factory: str | None) -> LoadedModel:
    """A .safetensors file: weights only, so the factory builds the module."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise LoadError(
            f"{path} is a safetensors file; reading it needs the safetensors package: pip install safetensors"
        ) from None
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise LoadError(f"{path}: cannot read the safetensors file ({one_line(exc)}): save it again") from exc
    state, _, notes = find_weights(state, path)
    module, more = module_with_weights(state, factory, path, "a safetensors file")
    return LoadedModel(format="safetensors", module=module, notes=notes + more)


def read_pickle(
    path: Path,
    refers_to: Iterable[str],
    factory: str | None,
    trust_pickle: bool,
    cause: BaseException | None = None,
) -> LoadedModel:
    """A pickled object: refused unless trusted; then it must be a module (or a checkpoint holding one)."""
    if not trust_pickle:
        raise LoadError(
            f"{path} is a pickled Python object that refers to {_describe(refers_to)}; {_UNTRUSTED} "
            f"re-save the model in a safe format: {SAFE_FORMATS}"
        ) from cause
    obj = _unpickle(path)
    trusted = [f"{_TRUSTED} ({_describe(refers_to)})"]
    module, key = (obj, None) if isinstance(obj, nn.Module) else _module_in_checkpoint(obj)
    if module is not None:
        notes = [f"module taken from checkpoint key {key!r}"] if key else []
        return LoadedModel(format="pickle", module=module, notes=trusted + notes + _mode_notes(module))
    if not isinstance(obj, Mapping):
        raise LoadError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module or a checkpoint")
    state, key, notes = find_weights(obj, path)
    module, more = module_with_weights(state, factory, path, "a pickled state_dict or checkpoint")
    return LoadedModel(format="pickle", module=module, notes=trusted + notes + more)


def _unpickle(path: Path) -> Any:
    cwd_importable()
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as exc:
        raise LoadError(
            f"{path}: the pickle needs code that is not importable here ({one_line(exc)}): run bnfold where "
            "the model's code is importable (the current directory is searched); a class defined in the "
            f"saving script (__main__) only exists there, so re-save from it as {SAFE_FORMATS}"
        ) from exc
    except Exception as exc:
        raise LoadError(f"{path}: cannot unpickle it ({one_line(exc)})") from exc


def _module_in_checkpoint(obj: Any) -> tuple[nn.Module | None, str | None]:
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            if isinstance(obj.get(key), nn.Module):
                return obj[key], key
    return None, None


def _mode_notes(module: nn.Module) -> list[str]:
    return ["the module was saved in training mode"] if module.training else []


def _describe(names: Iterable[str], shown: int = 4) -> str:
    """Outside-torch names first: ``posix.system`` matters more than ``torch.nn.modules.conv.Conv2d``."""
    ordered = sorted(names, key=lambda n: (n.startswith("torch."), n))
    text = ", ".join(ordered[:shown])
    return text + (f" and {len(ordered) - shown} more" if len(ordered) > shown else "")
