"""Bench: latency of the original and the folded model, timed interleaved, and the speedup.

:func:`bench_onnx` times ONNX models in onnxruntime, :func:`bench_torch` PyTorch eager modules; both
return :class:`LatencyResult` objects, and :func:`speedups` pairs original with folded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnfold._entry import make_callable
from bnfold.bench.cpu import cpu_model, default_threads, logical_cores, physical_cores
from bnfold.bench.inputs import InputSource
from bnfold.bench.onnx_latency import bench_onnx, binding_device
from bnfold.bench.speedup import Speedup, speedups
from bnfold.bench.timing import LatencyResult, Rounds, RoundsKeywords, interleave
from bnfold.bench.torch_latency import bench_torch

if TYPE_CHECKING:
    from bnfold.convert import ConvertConfig

__all__ = [
    "InputSource",
    "LatencyResult",
    "Rounds",
    "RoundsKeywords",
    "Speedup",
    "bench_models",
    "bench_onnx",
    "bench_torch",
    "binding_device",
    "cpu_model",
    "default_threads",
    "interleave",
    "logical_cores",
    "physical_cores",
    "speedups",
]


def bench_models(
    models: Sequence[str | Path], config: ConvertConfig | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``bnfold bench``: time one ONNX model, or two interleaved (the first is the baseline); the latency
    rows and the speedups as the report writes them. ``config`` carries ``input_shapes``, ``batches``,
    ``providers`` and ``threads``. Also callable as ``bnfold.bench``."""
    from bnfold.bench.files import bench_files
    from bnfold.convert import ConvertConfig

    if not 1 <= len(models) <= 2:
        from bnfold.errors import InputSpecError

        raise InputSpecError("give one ONNX model, or two to compare (original first)")
    latency, speedup = bench_files([Path(m) for m in models], config or ConvertConfig())
    return [row.to_json() for row in latency], [item.to_dict() for item in speedup]


make_callable(__name__, bench_models)
