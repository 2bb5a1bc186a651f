"""Runners: callables mapping a tuple of numpy input arrays to a list of numpy outputs.

A runner hides how a model is run (PyTorch eager in some dtype, onnxruntime with some providers and
optimisation level), so the parity matrix can compare any two of them. Nested outputs (tuples, lists,
dicts) are flattened in order.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import fx, nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from bnfold.verify.providers import CPU

Runner = Callable[[tuple[np.ndarray, ...]], list[np.ndarray]]
Optimization = Literal["all", "disabled"]


_ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class TorchRunner:
    """Runs a module under ``torch.inference_mode`` with its floating inputs cast to ``dtype``.

    For any dtype other than the module's own, the module computes as if converted with ``.to(dtype)``, at
    any size: each floating parameter and buffer is cast as an operator reads it (:class:`WeightsAs`), so
    one layer's weights in ``dtype`` are held at a time, never a converted copy of the model. Python code
    in an eager module can still see the weights' own dtype (``x.to(self.layer.weight.dtype)``); a call in
    which an operator turns a ``dtype`` value into a less precise one is therefore run again on a converted
    copy, kept for the calls after it (:func:`converted_copy`), so the numbers are those of ``.to(dtype)``
    either way. A TorchScript module, whose operators Python cannot follow, runs on the copy from the start.
    The caller's module is never changed.
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self.module = module
        self.weights: WeightsAs | None = None
        if module_dtype(module) not in (dtype, None):
            if isinstance(module, torch.jit.ScriptModule):
                self.module = converted_copy(module, dtype)
            else:
                self.weights = WeightsAs(module, dtype, guard=not fixed_dtypes(module))

    def __call__(self, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        tensors = tuple(self._tensor(x) for x in inputs)
        mode = self.weights.mode() if self.weights else None
        try:
            with torch.inference_mode(), mode if mode is not None else contextlib.nullcontext():
                out = self.module(*tensors)
        except Exception:
            if mode is None or not mode.demoted:
                raise
        if mode is not None and mode.demoted:  # Python code read a weight's own dtype: see the docstring
            self.module, self.weights = converted_copy(self.module, self.dtype), None
            with torch.inference_mode():
                out = self.module(*tensors)
        return [_to_numpy(t) for t in flatten_outputs(out)]

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor


def converted_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A deep copy of ``module`` in ``dtype``. The floating parameters and buffers are converted straight
    into the copy, so no full-size copy in the old dtype is ever made."""
    memo: dict[int, Any] = {}
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point() and id(tensor) not in memo:
            value = tensor.detach().to(dtype)
            memo[id(tensor)] = nn.Parameter(value, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else value
    return copy.deepcopy(module, memo).to(dtype)


def fixed_dtypes(module: nn.Module) -> bool:
    """Whether ``module`` is a graph whose dtypes are fixed (a GraphModule that reads no attribute at run
    time, as a torch.export module): no Python code of it can read a weight's dtype, so a cast it makes is
    the same on a converted copy."""
    return isinstance(module, fx.GraphModule) and not any(
        n.op == "call_function" and n.target is getattr for n in module.graph.nodes
    )


class WeightsAs:
    """A module's floating parameters and buffers, to be read in ``dtype``: inside :meth:`mode`, every
    operator gets such a tensor (or a view of it) cast to ``dtype``, and the cast is freed with the
    operator's result. Computing a model in float64 so holds one layer's float64 weights at a time, not a
    float64 copy of the model, and gives the same numbers as ``module.to(torch.float64)`` as long as no
    Python code casts a value to a weight's dtype; with ``guard``, the mode records whether an operator
    turned a ``dtype`` tensor into a less precise floating one (``mode().demoted``)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype, guard: bool = False) -> None:
        self.dtype = dtype
        self.guard = guard
        self.storages = {
            t.untyped_storage().data_ptr()
            for t in (*module.parameters(), *module.buffers())
            if t.is_floating_point() and t.dtype != dtype and t.numel()
        }

    def cast(self, tensor: torch.Tensor) -> torch.Tensor:
        if (
            tensor.is_floating_point()
            and tensor.dtype != self.dtype
            and tensor.numel()
            and (tensor.untyped_storage().data_ptr() in self.storages)
        ):
            return tensor.to(self.dtype)
        return tensor

    def mode(self) -> _CastingMode:
        return _CastingMode(self)


class _CastingMode(TorchDispatchMode):  # type: ignore[no-untyped-call,unused-ignore]
    def __init__(self, weights: WeightsAs) -> None:
        super().__init__()  # type: ignore[no-untyped-call,unused-ignore]
        self.weights = weights
        self.demoted = False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not func.is_view:  # a view of a weight stays one: the operator reading it casts it
            args, kwargs = pytree.tree_map_only(torch.Tensor, self.weights.cast, (args, kwargs or {}))
        out = func(*args, **(kwargs or {}))
        if self.weights.guard and not self.demoted:
            self.demoted = _demotes(self.weights.dtype, (args, kwargs), out)
        return out


def _demotes(dtype: torch.dtype, inputs: Any, out: Any) -> bool:
    """Whether an operator given a floating tensor in ``dtype`` returned a floating tensor less precise."""
    precision = torch.finfo(dtype).eps
    floating = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not any(torch.finfo(t.dtype).eps > precision for t in floating):
        return False
    return any(isinstance(t, torch.Tensor) and t.dtype == dtype for t in pytree.tree_leaves(inputs))


def torch_runner(module: nn.Module, dtype: torch.dtype = torch.float32) -> TorchRunner:
    """A runner for a PyTorch module computing in ``dtype`` (the module is not mutated)."""
    return TorchRunner(module, dtype)


class OrtRunner:
    """Runs an ONNX model in one onnxruntime session; inputs are matched to the graph inputs in order.

    ``providers`` lists what was asked for; ``session.get_providers()`` what onnxruntime actually uses.
    """

    def __init__(
        self,
        model: str | Path | bytes,
        providers: Sequence[str] = (CPU,),
        optimization: Optimization = "all",
        threads: int | None = None,
    ) -> None:
        self.providers = tuple(providers)
        self.optimization = optimization
        try:
            self.session = ort.InferenceSession(
                model if isinstance(model, bytes) else str(model),
                sess_options=session_options(optimization, threads),
                providers=list(self.providers),
            )
        except Exception as exc:  # onnxruntime raises its own error types
            missing = re.search(r"Could not find an implementation for (\S+)", str(exc))
            if missing is None:
                raise
            raise RuntimeError(_no_kernel(missing.group(1), model, self.providers)) from exc
        self.inputs = self.session.get_inputs()
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        return [np.asarray(o) for o in self.session.run(None, self.feeds(inputs))]

    def feeds(self, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The input dict for ``session.run``: arrays cast to the dtypes the graph declares."""
        if len(inputs) != len(self.inputs):
            raise ValueError(f"the ONNX model takes {len(self.inputs)} inputs, got {len(inputs)}")
        return {
            meta.name: np.ascontiguousarray(x, dtype=_ORT_DTYPES.get(meta.type, np.asarray(x).dtype))
            for meta, x in zip(self.inputs, inputs, strict=True)
        }


def _no_kernel(op: str, model: str | Path | bytes, providers: Sequence[str]) -> str:
    """Why onnxruntime cannot build a session: it has no kernel for ``op`` at the types the model uses."""
    said = f"onnxruntime ({', '.join(providers)}) has no kernel for {op} at the element types this model uses"
    try:
        proto = (
            onnx.load_from_string(model)
            if isinstance(model, bytes)
            else onnx.load(str(model), load_external_data=False)
        )
    except Exception:  # noqa: BLE001 - only for the hint below
        return said
    types = {i.type.tensor_type.elem_type for i in proto.graph.input}
    if onnx.TensorProto.DOUBLE in types:
        said += " (a float64 model: a float32 copy of it, model.float(), runs there)"
    return said


def ort_runner(
    model: str | Path | bytes,
    providers: Sequence[str] = (CPU,),
    optimization: Optimization = "all",
    threads: int | None = None,
) -> OrtRunner:
    """A runner for an ONNX file (or serialised bytes) in onnxruntime.

    ``optimization`` is "all" (``ORT_ENABLE_ALL``) or "disabled" (``ORT_DISABLE_ALL``); ``threads`` sets
    the intra-op thread count (None: onnxruntime's default).
    """
    return OrtRunner(model, providers, optimization, threads)


class LazyRunner:
    """A runner built on its first call and dropped by :meth:`release`, so that a parity run holds one
    heavy model at a time (an onnxruntime session, a model the caller lets go of). ``output_names``
    outlives the release; ``on_release`` is called by it (to drop what the runner was built from)."""

    def __init__(self, build: Callable[[], Runner], on_release: Callable[[], None] | None = None) -> None:
        self.build = build
        self.on_release = on_release
        self._runner: Runner | None = None
        self._names: list[str] | None = None

    def __call__(self, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        return self.runner(inputs)

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            self._runner = self.build()
            self._names = getattr(self._runner, "output_names", None)
        return self._runner

    @property
    def output_names(self) -> list[str] | None:
        return self._names if self._names is not None else getattr(self.runner, "output_names", None)

    def release(self) -> None:
        if self._runner is not None:
            self._runner = None
            if self.on_release is not None:
                self.on_release()
            return_freed_memory()


def drop_tensors(module: nn.Module, keep: nn.Module | None = None) -> None:
    """Free the tensors a module of our own making holds (parameters, buffers, tensor attributes), now that
    nothing will run it: a module sits in reference cycles (an ``fx.GraphModule`` and its graph point at
    each other), so dropping it frees them only when the garbage collector next runs (a full collection
    costs ~0.2 s in a process that imported torch), after the next model has been built beside them.
    Tensors shared with another module stay with it; a submodule that is also one of ``keep``'s is left
    as it is."""
    kept = {id(sub) for sub in keep.modules()} if keep is not None else set()
    for sub in module.modules():
        if id(sub) in kept:
            continue
        sub._parameters.clear()
        sub._buffers.clear()
        for name in [k for k, v in vars(sub).items() if isinstance(v, torch.Tensor)]:
            delattr(sub, name)


def return_freed_memory() -> None:
    """Hand the memory of a dropped model back to the OS where the C library keeps it (glibc's
    ``malloc_trim``), so that the next model's allocations do not stack on top of it in the peak RSS."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return
    trim(0)


def session_options(optimization: Optimization = "all", threads: int | None = None) -> ort.SessionOptions:
    """Session options with the given graph optimisation level, quiet logging, and thread count."""
    if optimization not in ("all", "disabled"):
        raise ValueError(f"optimization must be 'all' or 'disabled', not {optimization!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimization == "all"
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """The tensors of a (possibly nested) model output, in order; non-tensor leaves are dropped."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in flatten_outputs(item)]
    return []


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def module_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of the module's first floating parameter or buffer (None when it has none)."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None
