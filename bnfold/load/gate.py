"""The loading gate: while an untrusted file is read, nothing that comes from it may run.

torch's readers are not safe on their own. ``torch.export.load`` unpickles an archive's pickled weights,
constants and example inputs with ``weights_only=True`` and, when that fails, again with
``weights_only=False``; it reads opaque constants with plain ``pickle.loads``; it parses symbolic shape
expressions with ``sympy.sympify``, which evaluates strings; and ``torch.load`` ignores
``weights_only=True`` when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set. Predicting which part torch reads
how means re-implementing its archive format, and a second reader disagrees with the first on some file.

So the gate does not predict: it watches what actually happens while torch reads the file, through a
Python audit hook (PEP 578), and stops the read at the first thing a file of plain data never needs:

* an unpickler looking up a global that is not plain tensor data (``pickle.find_class``: every unpickler
  but torch's own restricted one, which refuses such globals itself);
* code compiled from anything but an arithmetic expression (what sympy parses), a module being imported,
  or torch.fx's generated code;
* a process, a native library, a file written or removed, a network connection;
* torch handing part of the file to native code that runs code of its own: compiled AOTInductor
  libraries and TorchScript custom objects (native loaders raise no audit event, so their entry points
  are replaced by a refusal while the gate is armed).

A refusal raises :class:`UntrustedContent`, a ``BaseException`` so that torch's ``except Exception``
fallbacks cannot swallow it, and is remembered besides: the read fails even if a caller swallows it.
"""

from __future__ import annotations

import ast
import builtins
import collections
import contextlib
import dataclasses
import importlib
import os
import sys
import tempfile
import threading
import traceback
import typing
from collections.abc import Iterator
from typing import Any

from bnfold.errors import LoadError

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
    *(f"builtins.{n}" for n in ("set", "frozenset", "bytearray", "complex", "slice")),
}
_TENSOR_TYPE_MODULES = {"torch", "torch.cuda"}  # torch.FloatStorage, torch.cuda.HalfTensor, ...

# Audit events a file of plain data never causes while it is read.
_FORBIDDEN_EVENTS = {
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
    "subprocess.Popen", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function",
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "urllib.Request", "webbrowser.open",
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
    "os.truncate", "os.utime", "os.putenv", "os.unsetenv", "shutil.rmtree", "shutil.move",
    "shutil.copyfile", "shutil.copytree", "shutil.make_archive", "shutil.unpack_archive", "code.__new__",
}  # fmt: skip
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# Builtins an annotation or a shape expression may name (type hints torch evaluates while reading).
_HARMLESS_BUILTINS = {"int", "float", "bool", "str", "bytes", "list", "dict", "tuple", "set", "None", "True", "False"}
_FX_CODE = "<eval_with_key>"
# Modules torch's readers import on first use (torch 2.6-2.13): imported before the gate is armed.
_LAZY_IMPORTS = (
    "torch.export.pt2_archive._package", "torch.serialization", "torch._export.serde.serialize",
    "torch.fx.experimental.validator", "torch.fx.experimental.symbolic_shapes", "torch.utils.serialization",
    "torch._inductor.sizevars", "torch._inductor.virtualized", "torch._inductor.ops_handler",
    "sympy.assumptions.wrapper", "sympy.parsing.sympy_parser",
)  # fmt: skip
# Native entry points torch's readers use for parts that are code: (module, attribute, what it loads).
_NATIVE_LOADERS = (
    ("torch._C._aoti", "AOTIModelPackageLoader", "load compiled AOTInductor code"),
    ("torch._C", "_pickle_load_obj", "load a TorchScript custom object"),
)
# Standard modules that compile code of their own while a file is read: type hints, namedtuple and
# dataclass methods, and a traceback being formatted (it parses source lines of Python files).
_CODE_GENERATORS = {typing.__file__, collections.__file__, dataclasses.__file__, traceback.__file__}
_PARSERS = {__file__, ast.__file__}  # frames between compile() and the code that asked for it
_BOOTSTRAP = "<frozen importlib._bootstrap>"


class UntrustedFileError(LoadError):
    """The file tried to run something while it was read; the message says what, and what to do."""


class UntrustedContent(BaseException):  # noqa: N818 - a refusal, not an error of bnfold's
    """Raised inside torch's reader when the file tries to run something."""


class _Gate:
    """Process-wide state of the audit hook: armed while a file is read, and what it refused."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.refused: list[str] = []
        self.inside = threading.local()  # the hook's own work (parsing an expression) is not checked

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.depth or getattr(self.inside, "active", False):
            return
        self.inside.active = True
        try:
            reason = _refusal(event, args)
        finally:
            self.inside.active = False
        if reason:
            self.refused.append(reason)
            raise UntrustedContent(reason)


_GATE = _Gate()
_installed = False


def _install() -> None:
    global _installed
    with _GATE.lock:
        if not _installed:
            sys.addaudithook(_GATE.hook)  # hooks cannot be removed: it stays, idle unless armed
            _installed = True


@contextlib.contextmanager
def untrusted(path: object, what: str) -> Iterator[None]:
    """Read ``path`` inside this block: anything that would run code ends it with :class:`UntrustedFileError`.

    ``what`` names the format for the message ("torch.export archive").
    """
    _install()
    _prepare_torch()
    refused_before = len(_GATE.refused)
    bytecode = sys.dont_write_bytecode
    with _GATE.lock:
        _GATE.depth += 1
    sys.dont_write_bytecode = True  # an import while reading must not need a file write
    try:
        with _native_loaders_refused():
            yield
    except UntrustedContent as exc:
        raise UntrustedFileError(_message(path, what, str(exc))) from None
    finally:
        sys.dont_write_bytecode = bytecode
        with _GATE.lock:
            _GATE.depth -= 1
    refused = _GATE.refused[refused_before:]
    if refused:  # torch caught the refusal and went on: the read still fails
        raise UntrustedFileError(_message(path, what, refused[0]))


@contextlib.contextmanager
def _native_loaders_refused() -> Iterator[None]:
    replaced = []
    for module_name, attribute, what in _NATIVE_LOADERS:
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, attribute):
            replaced.append((module, attribute, getattr(module, attribute)))
            setattr(module, attribute, _Refuse(what))
    try:
        yield
    finally:
        for module, attribute, original in replaced:
            setattr(module, attribute, original)


class _Refuse:
    """Stands in for a native loader: any use of it (a call, a static method) refuses the file."""

    def __init__(self, what: str) -> None:
        self.what = what

    def _refuse(self, *_args: object, **_kwargs: object) -> None:
        _GATE.refused.append(self.what)
        raise UntrustedContent(self.what)

    __call__ = _refuse

    def __getattr__(self, _name: str) -> Any:
        return self._refuse


def _message(path: object, what: str, reason: str) -> str:
    return (
        f"{path}: this {what} tries to {reason} while it is read, so it was not loaded. If you trust where it "
        "came from and it needs that, pass --trust-code (trust_code=True); otherwise re-save the model as a "
        "torch.export archive (.pt2), a state_dict or safetensors file with --model, or ONNX"
    )


def _prepare_torch() -> None:
    """Do before the read what torch's readers do lazily: imports, and tempfile's first-use probe (a write)."""
    for name in _LAZY_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)

    tempfile.gettempdir()


def _refusal(event: str, args: tuple[Any, ...]) -> str:
    """Why ``event`` may not happen while a file is read ("" when it may)."""
    if event == "pickle.find_class":
        module, name = str(args[0]), str(args[1])
        return "" if is_data_global(f"{module}.{name}") else f"import {module}.{name} from a pickle"
    if event == "compile":
        return _compile_refusal(args[0], str(args[1]))
    if event == "open":
        return _open_refusal(args)
    if event in _FORBIDDEN_EVENTS:
        return f"call {event} ({_brief(args)})"
    return ""


def _open_refusal(args: tuple[Any, ...]) -> str:
    path, mode, flags = (list(args) + [None, None, None])[:3]
    writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
    return f"write the file {path}" if writes else ""


def _compile_refusal(source: object, filename: str) -> str:
    if filename.startswith(_FX_CODE) or (filename.endswith(".py") and os.path.isfile(filename)):
        return ""  # torch.fx's generated code, or a module being imported
    if _caller_file() in _CODE_GENERATORS or _importing():
        return ""  # type hints, generated methods, code an installed module generates as it is imported
    if isinstance(source, bytes):
        source = source.decode("utf-8", "replace")
    tree = source if isinstance(source, ast.AST) else _parse(str(source))
    if tree is None:
        return ""  # no mode parses it: compile raises the same SyntaxError, nothing runs
    bad = _unsafe_node(tree)
    return f"evaluate code ({_brief((source,))}: {bad})" if bad else ""


def _parse(source: str) -> ast.AST | None:
    """The source as compile() may take it (the audit event does not say which mode): an expression, else
    statements, else None."""
    for mode in ("eval", "exec"):
        try:
            return ast.parse(source, mode=mode)
        except (SyntaxError, ValueError):
            continue
    return None


_EXPRESSION_NODES = (
    ast.Expression, ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
    ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.Call, ast.keyword, ast.Subscript, ast.Tuple,
    ast.List, ast.IfExp,
    # statements: sympy's parser runs ``from sympy import *`` before it evaluates an expression (only that
    # import is allowed; expression statements are held to the rules above)
    ast.Module, ast.ImportFrom, ast.alias, ast.Expr,
)  # fmt: skip


def _unsafe_node(tree: ast.AST) -> str:
    """What in ``tree`` is more than arithmetic on names and constants ("" when nothing is)."""
    for node in ast.walk(tree):
        if not isinstance(node, _EXPRESSION_NODES):
            return type(node).__name__
        if isinstance(node, ast.ImportFrom) and node.module != "sympy":
            return f"an import from {node.module}"
        if isinstance(node, ast.Name) and (
            node.id.startswith("_") or (hasattr(builtins, node.id) and node.id not in _HARMLESS_BUILTINS)
        ):
            return f"the name {node.id}"
    return ""


def _importing() -> bool:
    """Whether a module is being imported further up the stack: its code is installed code, and a file being
    read cannot start an import (unpickling imports nothing but tensor data, expressions name no modules)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename == _BOOTSTRAP:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _caller_file() -> str:
    """The file of the code that asked for the compilation (the first frame outside this module and ast)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename in _PARSERS:
        frame = frame.f_back  # type: ignore[assignment]
    return frame.f_code.co_filename if frame is not None else ""


def _brief(args: tuple[Any, ...], limit: int = 80) -> str:
    text = ", ".join(str(a) for a in args)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_data_global(name: str) -> bool:
    """Whether a pickle may name ``name``: tensor rebuild functions, storage types, dtypes, containers."""
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
