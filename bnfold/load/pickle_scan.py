"""Static inspection of pickles: which globals a pickle would import, found without unpickling anything.

A pickle can name any importable callable (``os.system``, ``builtins.exec``, a model class) and call it
while loading. Reading the opcode stream with :func:`pickletools.genops` shows those names without running
any of them, so bnfold can refuse a file before any loader touches it. The scan is a first line only:
files it passes are still read by torch's restricted ``weights_only`` unpickler.
"""

from __future__ import annotations

import pickletools
from collections.abc import Iterable
from typing import IO

# Globals that torch.save writes for plain data: tensors, storages, dtypes, ordered dicts. Being generous
# here is safe (the weights_only unpickler has the last word); being strict would turn harmless
# checkpoints into "needs --trust-pickle".
_DATA_MODULES = {"torch._utils", "torch._tensor", "torch.serialization"}
_DATA_GLOBALS = {
    "collections.OrderedDict",
    "torch.nn.parameter.Parameter",
    "builtins.set",
    "builtins.frozenset",
    "builtins.slice",
    "builtins.bytearray",
    "builtins.complex",
    "__builtin__.set",
    "__builtin__.frozenset",
    "__builtin__.slice",
    "__builtin__.bytearray",
    "__builtin__.complex",
    "_codecs.encode",
}
_TORCH_DATA_NAMES = {"Size", "Tensor", "device", "dtype", "finfo", "iinfo", "layout", "memory_format"}

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING"}
_UNKNOWN = "<unknown>"
_MARK = object()


def pickle_globals(stream: IO[bytes]) -> set[str]:
    """``module.name`` of every global one pickle in ``stream`` refers to (reads up to its STOP opcode).

    The pickle machine's stack is followed symbolically (strings kept, everything else opaque), so
    ``STACK_GLOBAL`` operands are resolved the way the unpickler would; any it cannot resolve is
    reported as ``<unknown>``, which errs towards looking unsafe.
    """
    found: set[str] = set()
    stack: list[object] = []
    memo: dict[int, object] = {}
    for opcode, arg, _ in pickletools.genops(stream):
        popped = _pop(stack, opcode)
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            found.add(str(arg).replace(" ", ".", 1))
        elif name == "STACK_GLOBAL":
            module, attribute = popped if len(popped) == 2 else (None, None)
            ok = isinstance(module, str) and isinstance(attribute, str)
            found.add(f"{module}.{attribute}" if ok else _UNKNOWN)
        elif name == "MEMOIZE":
            memo[len(memo)] = popped[0]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(str(arg))] = stack[-1] if stack else None
        if name == "MARK":
            stack.append(_MARK)
        elif name in _STRING_OPS:
            stack.append(arg)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(int(str(arg))))
        elif name in ("DUP", "MEMOIZE"):
            stack.extend(popped * len(opcode.stack_after))
        else:
            stack.extend([None] * len(opcode.stack_after))
    return found


def _pop(stack: list[object], opcode: pickletools.OpcodeInfo) -> list[object]:
    """Remove what ``opcode`` consumes from the symbolic stack; return it (a stack slice as one item)."""
    before = opcode.stack_before
    if pickletools.stackslice in before:
        while stack and stack.pop() is not _MARK:
            pass
        before = before[: before.index(pickletools.markobject)]
        return [None] + _take(stack, len(before))
    return _take(stack, len(before))


def _take(stack: list[object], count: int) -> list[object]:
    if count == 0:
        return []
    taken: list[object] = stack[-count:] if len(stack) >= count else [None] * count
    del stack[-count:]
    return taken


def code_globals(names: Iterable[str]) -> list[str]:
    """The globals that are not plain tensor data: classes and functions that loading would import."""
    return sorted(name for name in names if not _is_data_global(name))


def _is_data_global(name: str) -> bool:
    module, _, attribute = name.rpartition(".")
    if name in _DATA_GLOBALS or module in _DATA_MODULES:
        return True
    if module == "torch":  # storages (torch.FloatStorage), dtypes (torch.float32), torch.Size, ...
        return attribute.endswith("Storage") or attribute in _TORCH_DATA_NAMES or _is_torch_dtype(attribute)
    return False


def _is_torch_dtype(attribute: str) -> bool:
    import torch

    return isinstance(getattr(torch, attribute, None), torch.dtype)
