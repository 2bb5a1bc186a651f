"""Bench: latency of the original and the folded model, timed interleaved, and the speedup.

:func:`bench_onnx` times ONNX models in onnxruntime, :func:`bench_torch` PyTorch eager modules; both
return :class:`LatencyResult` objects, and :func:`speedups` pairs original with folded.
"""

from __future__ import annotations

from bnfold.bench.cpu import cpu_model, default_threads, logical_cores, physical_cores
from bnfold.bench.inputs import InputSource
from bnfold.bench.onnx_latency import bench_onnx, binding_device
from bnfold.bench.speedup import Speedup, speedups
from bnfold.bench.timing import LatencyResult, interleave
from bnfold.bench.torch_latency import bench_torch

__all__ = [
    "InputSource", "LatencyResult", "Speedup", "bench_onnx", "bench_torch", "binding_device", "cpu_model",
    "default_threads", "interleave", "logical_cores", "physical_cores", "speedups",
]
