"""Parity and latency for a conversion: which runners, on which inputs, against what."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnfold.convert.paths import Converted
from bnfold.load import InputSpec, LoadedModel, load_data, make_inputs
from bnfold.verify import (
    Candidate,
    LazyRunner,
    Tolerance,
    ort_runner,
    run_parity,
    select_providers,
    torch_runner,
    verify_parity,
)
from bnfold.verify.report import BASELINE, EXPORT, FOLD, ORT_OPTIMIZATION

Batches = list[tuple[str, tuple[np.ndarray, ...]]]


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as numpy; bfloat16 (which numpy lacks) as the float32 holding the same values exactly."""
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def parity_batches(inputs: tuple[torch.Tensor, ...], config: Any) -> Batches:
    """Named input batches: the example, ``config.seeds`` seeded random batches, and the user's data."""
    batches: Batches = [("example", tuple(as_numpy(t) for t in inputs))]
    spec = InputSpec.of(inputs)
    for seed in range(1, config.seeds + 1):
        batches.append((f"random seed {seed}", tuple(as_numpy(t) for t in make_inputs(spec, seed))))
    if config.data is not None:
        data = load_data(config.data, len(inputs))
        batches.append((f"data {config.data.name}", tuple(as_numpy(t) for t in data)))
    return batches


def tolerance_of(config: Any) -> tuple[Tolerance | None, dict[str | int, Tolerance]]:
    """The parity tolerance (None: by dtype) and per-output overrides from the config."""
    default = None
    if config.atol is not None or config.rtol is not None:
        base = Tolerance.for_dtype("float32")
        default = Tolerance(
            config.atol if config.atol is not None else base.atol, config.rtol if config.rtol is not None else base.rtol
        )
    per_output: dict[str | int, Tolerance] = {
        int(k) if k.isdigit() else k: Tolerance(a, r) for k, a, r in config.tolerances
    }
    return default, per_output


OPTIMIZED = "onnxruntime CPU (saved optimized model)"


def verify_stage(
    loaded: LoadedModel,
    converted: Converted,
    batches: Batches,
    config: Any,
    folded: Path | None = None,
    optimized: Path | None = None,
) -> dict[str, Any]:
    """The parity block of the report, by the path the model took. The folded ONNX model is run from
    ``folded`` (its saved file) when given; with ``optimized`` (the ``--save-optimized`` file), that file
    too, run as saved (no further onnxruntime rewrites)."""
    tolerance, per_output = tolerance_of(config)
    folded_bytes: Path | bytes = folded if folded is not None else converted.exported.model.SerializeToString()

    def extra(against: str) -> list[Candidate]:
        if optimized is None:
            return []
        runner = LazyRunner(lambda: ort_runner(optimized, optimization="disabled", threads=config.threads))
        return [Candidate(OPTIMIZED, runner, ORT_OPTIMIZATION, against)]

    if loaded.format == "onnx":
        report = _onnx_parity(converted.original, folded_bytes, batches, tolerance, per_output,
                              extra("folded onnxruntime CPU (optimizations off)"))
    elif loaded.format == "torchscript":
        report = _torchscript_parity(converted, folded_bytes, batches, tolerance, per_output,
                                     extra("onnxruntime CPU (optimizations off)"))
    else:
        report = verify_parity(
            converted.original,
            converted.folded,
            folded_bytes,
            batches,
            tolerance,
            per_output,
            providers=",".join(config.providers),
            threads=config.threads,
            extra=extra("onnxruntime CPU (optimizations off)"),
        )
    return report.to_json()


def _onnx_parity(
    original: bytes, folded: Path | bytes, batches: Batches, tolerance: Any, per_output: Any, extra: list[Candidate]
) -> Any:
    """ONNX in, ONNX out: the original as written (no ORT rewrites) is the reference."""
    reference = LazyRunner(lambda: ort_runner(original, optimization="disabled"))
    candidates = [
        Candidate(
            "folded onnxruntime CPU (optimizations off)",
            LazyRunner(lambda: ort_runner(folded, optimization="disabled")),
            FOLD,
        ),
        Candidate(
            "folded onnxruntime CPU (optimizations all)",
            LazyRunner(lambda: ort_runner(folded, optimization="all")),
            ORT_OPTIMIZATION,
            "folded onnxruntime CPU (optimizations off)",
        ),
        *extra,
    ]
    return run_parity(
        reference,
        candidates,
        batches,
        tolerance,
        per_output,
        lambda: reference.output_names,
        reference_name="original onnxruntime CPU (optimizations off)",
    )


def _torchscript_parity(
    converted: Converted,
    folded: Path | bytes,
    batches: Batches,
    tolerance: Any,
    per_output: Any,
    extra: list[Candidate],
) -> Any:
    """TorchScript in: fp64 TorchScript is the reference; the unfolded export isolates the fold."""
    module = converted.original
    unfolded = converted.original_onnx() if converted.original_onnx else folded
    candidates = [
        Candidate("original fp32", torch_runner(module), BASELINE),
        Candidate(
            "unfolded onnxruntime CPU (optimizations off)",
            LazyRunner(lambda: ort_runner(unfolded, optimization="disabled")),
            EXPORT,
            "original fp32",
        ),
        Candidate(
            "onnxruntime CPU (optimizations off)",
            LazyRunner(lambda: ort_runner(folded, optimization="disabled")),
            FOLD,
            "unfolded onnxruntime CPU (optimizations off)",
        ),
        Candidate(
            "onnxruntime CPU (optimizations all)",
            LazyRunner(lambda: ort_runner(folded, optimization="all")),
            ORT_OPTIMIZATION,
            "onnxruntime CPU (optimizations off)",
        ),
        *extra,
    ]
    report = run_parity(
        LazyRunner(lambda: torch_runner(module, torch.float64)),
        candidates,
        batches,
        tolerance,
        per_output,
        output_names=None,
    )
    report.notes = list(select_providers("auto").notes)
    return report


def bench_stage(
    loaded: LoadedModel,
    converted: Converted,
    inputs: tuple[torch.Tensor, ...],
    config: Any,
    folded: Path | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Latency of the original and the folded model (from its saved file ``folded`` when given),
    interleaved, on every provider and batch size."""
    from bnfold.bench import bench_onnx, bench_torch, speedups

    sizes = batch_sizes(converted, inputs, config.batches)
    spec = InputSpec.of(inputs)

    def factory(batch: int) -> tuple[np.ndarray, ...]:
        return tuple(as_numpy(t) for t in make_inputs(spec.with_batch(batch), seed=0))

    models = {
        "original": converted.original_onnx() if converted.original_onnx else None,
        "folded": folded if folded is not None else converted.exported.model.SerializeToString(),
    }
    selection = select_providers(",".join(config.providers))
    results = bench_onnx(
        {k: v for k, v in models.items() if v is not None},
        factory,
        providers=selection.providers,
        threads=config.threads,
        batch_sizes=sizes,
    )
    if isinstance(converted.folded, torch.nn.Module) and isinstance(converted.original, torch.nn.Module):
        results += bench_torch(
            {"original": converted.original, "folded": converted.folded},
            factory,
            threads=config.threads,
            batch_sizes=sizes,
        )
    return [r.to_json() for r in results], [s.to_json() for s in speedups(results)]


def batch_sizes(converted: Converted, inputs: tuple[torch.Tensor, ...], requested: tuple[int, ...]) -> list[int]:
    """The requested batch sizes when the exported batch dimension is dynamic, else the example's."""
    example = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else 1
    graph_inputs = converted.exported.model.graph.input
    dims = graph_inputs[0].type.tensor_type.shape.dim if graph_inputs else []
    dynamic = bool(dims) and bool(dims[0].dim_param)
    return list(requested) if requested and dynamic else [example]
