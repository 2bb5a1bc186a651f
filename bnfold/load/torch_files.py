"""Readers for torch's own files: torch.export archives, torch.save weights, and the formats that carry code.

Every untrusted read runs inside the loading gate (:mod:`bnfold.load.gate`): whatever path torch takes
inside, including its fallbacks to an unrestricted unpickle, nothing from the file runs. Formats that are
code (TorchScript archives, pickled modules) are loaded only when the user trusts the file
(``--trust-code``); otherwise the refusal names the safe formats.
"""

from __future__ import annotations

import operator
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnfold.errors import LoadError, one_line
from bnfold.load.factory import ModelFactory, cwd_importable
from bnfold.load.gate import UntrustedFileError, untrusted
from bnfold.load.limits import check_safetensors
from bnfold.load.loaded import LoadedModel
from bnfold.load.weights import CHECKPOINT_KEYS, find_weights, module_with_weights

SAFE_FORMATS = (
    "a torch.export archive (torch.export.save, .pt2), a state_dict or safetensors file used with "
    "--model package.module:factory, or ONNX"
)
_TRUSTED = "loaded as trusted code (--trust-code)"
# Functions an exported graph may call besides torch operators: torch.export's symbolic-shape arithmetic.
_OPERATORS = (
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "eq", "ne", "lt", "le",
    "gt", "ge", "and_", "or_", "not_", "abs",
)  # fmt: skip
_SYMBOLIC = (torch.sym_int, torch.sym_float, torch.sym_ite, torch.sym_max, torch.sym_min, torch.sym_not, torch.sym_sqrt)
_GRAPH_FUNCTIONS = {getattr(operator, name) for name in _OPERATORS} | set(_SYMBOLIC)


def read_exported(path: Path, trust_code: bool = False) -> LoadedModel:
    """A torch.export archive: the program, its module, and the example inputs stored with it."""
    try:
        if trust_code:
            program = torch.export.load(str(path))
        else:
            with untrusted(path, "torch.export archive"):
                program = torch.export.load(str(path))
    except LoadError:
        raise
    except Exception as exc:  # a damaged archive raises many kinds of errors
        raise LoadError(f"{path}: cannot read the torch.export archive ({one_line(exc)})") from exc
    if not trust_code:
        _refuse_foreign_calls(path, program)
    example = program.example_inputs
    args = tuple(example[0]) if example else None
    module = program.module()
    for submodule in module.modules():  # a traced graph has no mode (its ops are fixed): none to report
        submodule.training = False
    return LoadedModel(
        format="torch.export",
        module=module,
        example_inputs=args,
        exported=program,
        dynamic_batch=_has_dynamic_batch(program),
        notes=[_TRUSTED] if trust_code else [],
    )


def _refuse_foreign_calls(path: Path, program: torch.export.ExportedProgram) -> None:
    """An exported graph calls torch operators; a call to any other Python function would run it."""
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in graph.nodes if graph is not None else ():
            if node.op in ("call_method", "call_module") or (
                node.op == "call_function" and not _is_graph_operator(node.target)
            ):
                raise LoadError(
                    f"{path}: this torch.export archive's graph calls {_name(node.target)}, which is not a "
                    "torch operator, so it was not loaded. If you trust where it came from, pass --trust-code "
                    f"(trust_code=True); otherwise re-export the model with torch.export.save, or give {SAFE_FORMATS}"
                )


def _is_graph_operator(target: Any) -> bool:
    operators = (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)
    return isinstance(target, operators) or target in _GRAPH_FUNCTIONS


def _name(target: Any) -> str:
    module = getattr(target, "__module__", None)
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    return f"{module}.{name}" if module else str(name)


def _has_dynamic_batch(program: torch.export.ExportedProgram) -> bool:
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            value = node.meta.get("val")
            if isinstance(value, torch.Tensor) and value.dim() > 0 and not isinstance(value.shape[0], int):
                return True
    return False


def read_torchscript(path: Path, trust_code: bool = False) -> LoadedModel:
    """A torch.jit.save archive, loaded onto the CPU: its code runs when it loads, so only when trusted."""
    if not trust_code:
        raise LoadError(
            f"{path} is a TorchScript archive: it holds code that runs when it is loaded. If you trust where "
            f"it came from, pass --trust-code (trust_code=True); otherwise give {SAFE_FORMATS}"
        )
    try:
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call,unused-ignore]
    except Exception as exc:
        raise LoadError(f"{path}: cannot read the TorchScript archive ({one_line(exc)})") from exc
    notes = [_TRUSTED, "TorchScript archives store no example inputs", *_mode_notes(module)]
    return LoadedModel(format="torchscript", module=module, notes=notes)


def read_torch_file(path: Path, factory: ModelFactory | None, trust_code: bool) -> LoadedModel:
    """A torch.save file: a state_dict, a checkpoint holding one, or (trusted only) a pickled module."""
    try:
        with untrusted(path, "torch file"):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, UntrustedFileError) as exc:  # it refers to more than tensor data
        if not trust_code:
            raise LoadError(_code_refusal(path, exc)) from None
        return _trusted_pickle(path, factory, _refers_to(exc))
    except LoadError:
        raise
    except Exception as exc:
        raise LoadError(_unreadable(path, exc)) from exc
    state, key, notes = find_weights(obj, path)
    what = "a state_dict" if key is None else f"a training checkpoint (weights under {key!r})"
    module, more = module_with_weights(state, factory, path, what)
    return LoadedModel(format="state_dict" if key is None else "checkpoint", module=module, notes=notes + more)


def _refers_to(exc: BaseException) -> str:
    """What the restricted unpickler refused: "refers to package.Class", from torch's message or the gate's."""
    named = re.search(r"GLOBAL ([\w.]+)|import ([\w.]+) from a pickle", str(exc))
    return f"refers to {named.group(1) or named.group(2)}" if named else "holds more than tensor data"


def _code_refusal(path: Path, exc: BaseException) -> str:
    if isinstance(exc, UntrustedFileError):
        return str(exc)
    what = _refers_to(exc)
    return (
        f"{path} is a pickled Python object that {what}: loading it would run code from the file. If you "
        f"trust where it came from, pass --trust-code (trust_code=True); better, re-save the model as "
        f"{SAFE_FORMATS}"
    )


def _unreadable(path: Path, exc: Exception) -> str:
    if "magic number" in str(exc).lower():
        return (
            f"{path} is a plain Python pickle, not a torch file; bnfold does not unpickle arbitrary objects: "
            f"give {SAFE_FORMATS}"
        )
    return f"{path}: cannot read the torch file ({one_line(exc)}): copy or save it again"


def read_safetensors(path: Path, factory: ModelFactory | None) -> LoadedModel:
    """A .safetensors file: weights only, so the factory builds the module."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise LoadError(
            f"{path} is a safetensors file; reading it needs the safetensors package: pip install safetensors"
        ) from None
    check_safetensors(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise LoadError(f"{path}: cannot read the safetensors file ({one_line(exc)}): save it again") from exc
    state, _, notes = find_weights(state, path)
    module, more = module_with_weights(state, factory, path, "a safetensors file")
    return LoadedModel(format="safetensors", module=module, notes=notes + more)


def _trusted_pickle(path: Path, factory: ModelFactory | None, refers_to: str) -> LoadedModel:
    """A pickled object the user trusts: a module, a checkpoint holding one, or a checkpoint of weights."""
    obj = _unpickle(path)
    trusted = f"{_TRUSTED}: it {refers_to}"
    module, key = (obj, None) if isinstance(obj, nn.Module) else _module_in_checkpoint(obj)
    if module is not None:
        notes = [f"module taken from checkpoint key {key!r}"] if key else []
        return LoadedModel(format="pickle", module=module, notes=[trusted, *notes, *_mode_notes(module)])
    if not isinstance(obj, Mapping):
        raise LoadError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module or a checkpoint")
    state, key, notes = find_weights(obj, path)
    module, more = module_with_weights(state, factory, path, "a pickled state_dict or checkpoint")
    return LoadedModel(format="pickle", module=module, notes=[trusted, *notes, *more])


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
