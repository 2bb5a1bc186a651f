"""Static inspection of pickles: which globals a pickle would import, found without unpickling anything.

A pickle can name any importable callable (``os.system``, ``builtins.exec``, a model class) and call it
while loading. Reading the opcode stream with :func:`pickletools.genops` shows those names without running
any of them, so bnfold can refuse a file before any loader touches it.

The data globals below are exact names (a subset of torch's ``weights_only`` allowlist), not whole
modules: ``torch.export.load`` falls back to a full unpickle of an archive's pickled parts, so this scan is
the only guard there, and modules like ``torch._utils`` or ``torch.serialization`` also hold functions that
import or unpickle whatever they are given.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from collections.abc import Iterable
from typing import IO

# What torch.save writes for tensors and plain containers (torch.float32 and the like are checked apart).
_DATA_GLOBALS = {
    "_codecs.encode",
    "collections.OrderedDict",
    "collections.Counter",
    "torch.Size",
    "torch.device",
    "torch.nn.parameter.Parameter",
    "torch.serialization._get_layout",
    "torch._tensor._rebuild_from_type_v2",
    *(
        f"{m}.{n}"
        for m in ("builtins", "__builtin__")
        for n in ("set", "frozenset", "bytearray", "complex", "slice")
    ),
}
_TENSOR_TYPE_MODULES = {"torch", "torch.cuda", "torch.sparse", "torch.cuda.sparse"}  # torch.FloatStorage, ...
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER, the first pickle of legacy files
_LEGACY_PICKLES = 5  # magic, protocol version, system info, the object, storage keys; raw bytes follow

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


def torch_blob_globals(stream: IO[bytes]) -> tuple[set[str], bool]:
    """Globals of a torch.save payload read from its start: a zip (its ``data.pkl``), or back-to-back
    pickles (legacy torch.save, a plain pickle). Also returns whether it was a legacy torch.save stream.

    Raises ``ValueError`` / ``EOFError`` when the bytes are no pickle: a loader would fail on them too.
    """
    head = stream.read(4)
    stream.seek(-len(head), io.SEEK_CUR)
    if head == b"PK\x03\x04":
        with zipfile.ZipFile(stream) as archive:
            found: set[str] = set()
            for name in archive.namelist():
                if name.endswith("data.pkl"):
                    with archive.open(name) as member:
                        found |= pickle_globals(member)
            return found, False
    first = [arg for _, arg, _ in pickletools.genops(stream)]
    if _LEGACY_MAGIC not in first:
        stream.seek(0)
        return pickle_globals(stream), False
    found = set()
    for _ in range(_LEGACY_PICKLES - 1):
        found |= pickle_globals(stream)
    return found, True


def code_globals(names: Iterable[str]) -> list[str]:
    """The globals that are not plain tensor data: classes and functions that loading would import."""
    return sorted(name for name in names if not _is_data_global(name))


def _is_data_global(name: str) -> bool:
    module, _, attribute = name.rpartition(".")
    if name in _DATA_GLOBALS:
        return True
    if module == "torch._utils":
        return attribute.startswith("_rebuild_")
    if module in _TENSOR_TYPE_MODULES and attribute.endswith(("Storage", "Tensor")):
        return attribute[:1].isupper()
    return module == "torch" and _is_torch_constant(attribute)


def _is_torch_constant(attribute: str) -> bool:
    """torch.float32, torch.strided, torch.channels_last, torch.per_tensor_affine: values, not callables."""
    import torch

    value = getattr(torch, attribute, None)
    return isinstance(value, (torch.dtype, torch.layout, torch.memory_format, torch.qscheme))
