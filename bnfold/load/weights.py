"""Weights without an architecture: find them in a checkpoint, match their names, load them into a module."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnfold.errors import LoadError
from bnfold.load.factory import ModelFactory

# Where training code keeps the weights in a checkpoint dict, most specific first.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "ema", "model_ema", "state_dict_ema", "net", "module")
# Name prefixes added by wrappers: DataParallel / DDP, torch.compile, a LightningModule's ``self.model``.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")

StateDict = dict[str, torch.Tensor]


def is_state_dict(value: Any) -> bool:
    """A non-empty mapping of names to tensors."""
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def find_weights(obj: Any, path: Path) -> tuple[StateDict, str | None, list[str]]:
    """The state_dict in ``obj`` (itself, or under a checkpoint key), the key used, and a note on it."""
    if is_state_dict(obj):
        return dict(obj), None, []
    if not isinstance(obj, Mapping) or not obj:
        what = "an empty dict" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise LoadError(f"{path} holds {what}, not a state_dict or a checkpoint with one")
    present = [key for key in CHECKPOINT_KEYS if is_state_dict(obj.get(key))]
    if not present:
        keys = ", ".join(repr(k) for k in list(obj)[:8]) + (", ..." if len(obj) > 8 else "")
        raise LoadError(
            f"{path} holds a dict with keys {keys} but no weights under any of "
            f"{', '.join(CHECKPOINT_KEYS)}: re-save it with torch.save(model.state_dict(), ...)"
        )
    key, others = present[0], present[1:]
    note = f"weights taken from checkpoint key {key!r}"
    if others:
        note += f" (also present: {', '.join(repr(k) for k in others)})"
    return dict(obj[key]), key, [note]


def module_with_weights(
    state: StateDict, factory: ModelFactory | None, path: Path, what: str
) -> tuple[nn.Module, list[str]]:
    """Build the factory's module, load ``state`` into it and set it to eval mode.

    A freshly built module is in training mode by default, which says nothing of the user's intent. The
    notes say which wrapper prefix was stripped from the names, if any.
    """
    if factory is None:
        raise LoadError(
            f"{path} is {what}: it holds weights but no architecture; name the code that builds the model "
            "with --model package.module:factory"
        )
    module = factory.build()
    expected = set(module.state_dict())
    state, notes = _match_names(state, expected)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        problem = _prefix_problem(state, expected) or _load_problem(exc)
        raise LoadError(f"{path} does not fit the model built by {factory}: {problem}") from exc
    return module.eval(), notes


def _match_names(state: StateDict, expected: set[str]) -> tuple[StateDict, list[str]]:
    """Strip wrapper prefixes shared by every name when that makes the names fit the module exactly (a
    BatchNorm's ``num_batches_tracked``, which older files lack and loading fills in, aside)."""
    candidate, stripped = state, ""
    while _core(candidate) != _core(expected):
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in candidate)), None)
        if prefix is None:
            return state, []  # no exact fit: load_state_dict will name the differences
        candidate = {k[len(prefix) :]: v for k, v in candidate.items()}
        stripped += prefix
    notes = [f"stripped the name prefix {stripped!r} from every weight"] if stripped else []
    return candidate, notes


def _core(names: Iterable[str]) -> set[str]:
    return {n for n in names if n.rpartition(".")[2] != "num_batches_tracked"}


def _prefix_problem(state: StateDict, expected: set[str]) -> str | None:
    """When most names carry a wrapper prefix the module's lack, what is left over once it is removed."""
    for prefix in WRAPPER_PREFIXES:
        carried = [k for k in state if k.startswith(prefix)]
        if len(carried) * 2 <= len(state):
            continue
        stripped = {k.removeprefix(prefix) for k in state}
        unexpected = sorted(_core(stripped) - expected)
        missing = sorted(_core(expected) - stripped)
        if len(unexpected) + len(missing) >= len(_core(expected)):
            continue  # the prefix explains nothing
        said = "; ".join(
            f"{what} {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
            for what, names in (("missing", missing), ("not in the model", unexpected))
            if names
        )
        return (
            f"its names carry the prefix {prefix!r} (a training wrapper's), and once it is removed they still differ: "
            f"{said}; save the model's own state_dict (e.g. lightning_module.model.state_dict())"
        )
    return None


def _load_problem(exc: RuntimeError) -> str:
    """The informative lines of ``load_state_dict``'s error (its first line only names the class)."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
    text = "; ".join(lines[:2]) if lines else str(exc)
    return text if len(text) <= 400 else text[:397] + "..."
