"""Latency of PyTorch eager modules (original and folded), timed interleaved under inference mode."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from typing_extensions import Unpack

from bnfold.bench.cpu import default_threads
from bnfold.bench.inputs import InputSource, batches_of
from bnfold.bench.onnx_latency import rounds_of
from bnfold.bench.timing import LatencyResult, RoundsKeywords, interleave
from bnfold.verify.runners import module_dtype

BACKEND = "torch"
PROVIDER = "eager"


def eager_call(module: nn.Module, arrays: Sequence[np.ndarray]) -> Callable[[], object]:
    """A call running ``module`` on tensors made once from ``arrays``, under ``torch.inference_mode``;
    floating arrays are cast to the module's dtype (numpy has no bfloat16: a bfloat16 model's inputs come
    as the float32 arrays holding their values)."""
    dtype = module_dtype(module)
    tensors = tuple(_tensor(a, dtype) for a in arrays)

    def call() -> object:
        with torch.inference_mode():
            return module(*tensors)

    return call


def _tensor(array: np.ndarray, dtype: torch.dtype | None) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def bench_torch(
    modules: Mapping[str, nn.Module],
    inputs: InputSource,
    threads: int | None = None,
    batch_sizes: Sequence[int] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    **rounds: Unpack[RoundsKeywords],
) -> list[LatencyResult]:
    """Time each module (e.g. ``{"original": ..., "folded": ...}``) per batch size on the CPU.

    Runs with ``torch.set_num_threads(threads)`` (default: one per physical core) and restores the
    previous thread count afterwards. Modules are run as given (put them in eval mode first).
    ``progress`` hears of each timing round (``"torch eager batch 8"``, rounds done, rounds expected).
    ``rounds``: how long each is timed, as in :func:`~bnfold.bench.bench_onnx`.
    """
    threads = threads or default_threads()
    per_batch = batches_of(inputs, batch_sizes)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results: list[LatencyResult] = []
        for batch, arrays in per_batch.items():
            calls = {name: eager_call(module, arrays) for name, module in modules.items()}
            samples = interleave(calls, on_round=rounds_of(progress, f"{BACKEND} {PROVIDER} batch {batch}"), **rounds)
            results += [
                LatencyResult.of(
                    samples[name], backend=BACKEND, provider=PROVIDER, model=name, batch=batch, threads=threads
                )
                for name in modules
            ]
        return results
    finally:
        torch.set_num_threads(previous)
