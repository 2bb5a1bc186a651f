"""Runners: callables mapping a tuple of numpy input arrays to a list of numpy outputs.

A runner hides how a model is run (PyTorch eager in some dtype, onnxruntime with some providers and
optimisation level), so the parity matrix can compare any two of them. Nested outputs (tuples, lists,
dicts) are flattened in order.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
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

    For any dtype other than the module's own, the module computes as if converted with ``.to(dtype)``:
    a graph whose dtypes are fixed (a torch.export module) and any model from :data:`CAST_AS_READ_BYTES` of
    weights on have each floating parameter and buffer cast as an operator reads it (:class:`WeightsAs`),
    so no converted copy of the whole model is held; other models run on a converted deep copy (Python code
    that reads a weight's dtype then sees ``dtype``). The caller's module is never changed.
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self.module = module
        self.weights: WeightsAs | None = None
        if module_dtype(module) not in (dtype, None):
            if casts_as_read(module):
                self.weights = WeightsAs(module, dtype)
            else:
                self.module = converted_copy(module, dtype)

    def __call__(self, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        tensors = tuple(self._tensor(x) for x in inputs)
        with torch.inference_mode(), self.weights.mode() if self.weights else contextlib.nullcontext():
            out = self.module(*tensors)
        return [_to_numpy(t) for t in flatten_outputs(out)]

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor


def converted_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A deep copy of ``module`` in ``dtype``. The floating parameters and buffers are converted straight
    into the copy, so no full-size copy in the old dtype is ever made (for an fp64 reference that is a third
    less memory at the peak)."""
    memo: dict[int, Any] = {}
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point() and id(tensor) not in memo:
            value = tensor.detach().to(dtype)
            memo[id(tensor)] = nn.Parameter(value, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else value
    return copy.deepcopy(module, memo).to(dtype)


CAST_AS_READ_BYTES = 1 << 30
"""Weights from this size on (1 GiB: a float64 copy of 2 GiB) are cast as read, whatever the model."""


def casts_as_read(module: nn.Module) -> bool:
    """Whether :class:`TorchRunner` casts ``module``'s weights as read rather than copying it: a graph whose
    dtypes are fixed (no ``getattr`` at run time, as in a torch.export module), or a large model. Not a
    TorchScript module, whose operators Python cannot follow."""
    if isinstance(module, torch.jit.ScriptModule):
        return False
    if isinstance(module, fx.GraphModule) and not any(
        n.op == "call_function" and n.target is getattr for n in module.graph.nodes
    ):
        return True
    weights = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in (*module.parameters(), *module.buffers())
        if t.is_floating_point() and t.numel()
    }
    return sum(weights.values()) >= CAST_AS_READ_BYTES


class WeightsAs:
    """A module's floating parameters and buffers, to be read in ``dtype``: inside :meth:`mode`, every
    operator gets such a tensor (or a view of it) cast to ``dtype``, and the cast is freed with the
    operator's result. Computing a model in float64 so holds one layer's float64 weights at a time, not a
    float64 copy of the model, and gives the same numbers as ``module.to(torch.float64)``."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        self.dtype = dtype
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

    def mode(self) -> TorchDispatchMode:
        return _CastingMode(self)


class _CastingMode(TorchDispatchMode):  # type: ignore[no-untyped-call,unused-ignore]
    def __init__(self, weights: WeightsAs) -> None:
        super().__init__()  # type: ignore[no-untyped-call,unused-ignore]
        self.weights = weights

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not func.is_view:  # a view of a weight stays one: the operator reading it casts it
            args, kwargs = pytree.tree_map_only(torch.Tensor, self.weights.cast, (args, kwargs or {}))
        return func(*args, **(kwargs or {}))


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
        self.session = ort.InferenceSession(
            model if isinstance(model, bytes) else str(model),
            sess_options=session_options(optimization, threads),
            providers=list(self.providers),
        )
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
    heavy model at a time (an fp64 copy, an onnxruntime session). ``output_names`` outlives the release."""

    def __init__(self, build: Callable[[], Runner]) -> None:
        self.build = build
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
            return_freed_memory()


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
