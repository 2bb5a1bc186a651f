"""Parity and latency for a conversion: which runners, on which inputs, against what."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnfold.convert.paths import Converted
from bnfold.errors import InputSpecError
from bnfold.export import session_source
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
from bnfold.verify.matrix import ReferenceSink, Steps
from bnfold.verify.report import BASELINE, EXPORT, FOLD, ORT_OPTIMIZATION
from bnfold.verify.tolerance import check_output_keys

Batches = list[tuple[str, tuple[np.ndarray, ...]]]


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as numpy; bfloat16 (which numpy lacks) as the float32 holding the same values exactly."""
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def parity_batches(inputs: tuple[torch.Tensor, ...], config: Any, dims: Dims | None = None) -> Batches:
    """Named input batches: the example, ``config.random_batches`` seeded random batches, and the user's data, which
    must fit ``dims`` (the model's declared input dimensions, None where free; by default the example's
    with a free batch)."""
    batches: Batches = [("example", tuple(as_numpy(t) for t in inputs))]
    spec = InputSpec.of(inputs)
    for seed in range(1, config.random_batches + 1):
        batches.append((f"random seed {seed}", tuple(as_numpy(t) for t in make_inputs(spec, seed))))
    if config.data is not None:
        data = load_data(config.data, len(inputs))
        if dims is None or len(dims) != len(inputs):
            dims = [(None, *t.shape[1:]) for t in inputs]
        triples = enumerate(zip(data, inputs, dims, strict=False))
        fitted = tuple(fit_data(config.data, i, a, e, d) for i, (a, e, d) in triples)
        batches.append((f"data {config.data.name}", fitted))
    return batches


Dims = list[tuple[int | None, ...]]


def graph_dims(model: Any) -> Dims:
    """The declared dimensions of an ONNX graph's inputs (None for a symbolic one)."""
    stored = {t.name for t in model.graph.initializer}
    return [
        tuple(d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim)
        for v in model.graph.input
        if v.name not in stored
    ]


def fit_data(path: Path, index: int, data: torch.Tensor, example: torch.Tensor, dims: tuple[int | None, ...]) -> Any:
    """``--data``'s array ``index`` as the model takes it: a real number type of the input's kind (cast to
    the input's dtype) and a shape that fits ``dims``; :class:`InputSpecError` otherwise."""
    kinds_fit = (
        data.is_floating_point() if example.is_floating_point() else not (data.is_floating_point() or data.is_complex())
    )
    if not kinds_fit:
        kind = "floating-point" if example.is_floating_point() else "integer"
        raise InputSpecError(
            f"--data {path}: array {index} holds {str(data.dtype).removeprefix('torch.')}, input "
            f"{index} of the model takes {kind} values ({str(example.dtype).removeprefix('torch.')})"
        )
    shape = tuple(data.shape)
    if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape, strict=True)):
        wanted = "x".join("?" if d is None else str(d) for d in dims)
        raise InputSpecError(
            f"--data {path}: array {index} has shape {'x'.join(map(str, shape)) or 'scalar'}, input "
            f"{index} of the model takes {wanted}" + (" (? free)" if None in dims else "")
        )
    return as_numpy(data.to(example.dtype))


def tolerance_of(config: Any) -> tuple[Tolerance | None, dict[str | int, Tolerance]]:
    """The parity tolerance (None: by dtype) and per-output overrides from the config (whose values were
    checked when it was built)."""
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
    progress: Steps | None = None,
    on_reference: ReferenceSink | None = None,
) -> dict[str, Any]:
    """The parity block of the report, by the path the model took. The folded ONNX model is run from
    ``folded`` (its saved file) when given; with ``optimized`` (the ``--save-optimized`` file), that file
    too, run as saved (no further onnxruntime rewrites). ``progress`` and ``on_reference`` go to
    :func:`~bnfold.verify.run_parity`."""
    hooks = {"progress": progress, "on_reference": on_reference}
    tolerance, per_output = tolerance_of(config)
    check_output_keys([key for key, _, _ in config.tolerances], [o.name for o in converted.exported.model.graph.output])
    with tempfile.TemporaryDirectory(prefix="bnfold-") as folder:
        parity: dict[str, Any] = _verify_stage(
            loaded, converted, batches, config, folded, optimized, Path(folder), tolerance, per_output, hooks
        ).to_json()
    return parity


def _verify_stage(
    loaded: LoadedModel,
    converted: Converted,
    batches: Batches,
    config: Any,
    folded: Path | None,
    optimized: Path | None,
    folder: Path,
    tolerance: Any,
    per_output: Any,
    hooks: dict[str, Any],
) -> Any:
    """The parity report; models past protobuf's limit that are not files yet are written into ``folder``."""
    folded_bytes = session_source(folded if folded is not None else converted.exported.model, folder / "folded")

    def extra(against: str) -> list[Candidate]:
        if optimized is None:
            return []
        runner = LazyRunner(lambda: ort_runner(optimized, optimization="disabled", threads=config.threads))
        return [Candidate(OPTIMIZED, runner, ORT_OPTIMIZATION, against)]

    if loaded.format == "onnx":
        original = session_source(converted.original, folder / "original")
        return _onnx_parity(
            original,
            folded_bytes,
            batches,
            tolerance,
            per_output,
            extra("folded onnxruntime CPU (optimizations off)"),
            hooks,
        )
    if loaded.format == "torchscript":
        unfolded = (
            session_source(converted.original_onnx(), folder / "original", in_place=True)
            if converted.original_onnx
            else None
        )
        return _torchscript_parity(
            converted,
            unfolded or folded_bytes,
            folded_bytes,
            batches,
            tolerance,
            per_output,
            extra("onnxruntime CPU (optimizations off)"),
            hooks,
        )
    return verify_parity(
        converted.original,
        converted.folded,
        folded_bytes,
        batches,
        tolerance,
        per_output,
        providers=",".join(config.providers),
        threads=config.threads,
        extra=extra("onnxruntime CPU (optimizations off)"),
        **hooks,
    )


def _onnx_parity(
    original: Path | bytes,
    folded: Path | bytes,
    batches: Batches,
    tolerance: Any,
    per_output: Any,
    extra: list[Candidate],
    hooks: dict[str, Any],
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
        **hooks,
    )


def _torchscript_parity(
    converted: Converted,
    unfolded: Path | bytes,
    folded: Path | bytes,
    batches: Batches,
    tolerance: Any,
    per_output: Any,
    extra: list[Candidate],
    hooks: dict[str, Any],
) -> Any:
    """TorchScript in: fp64 TorchScript is the reference; the unfolded export isolates the fold."""
    module = converted.original
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
        **hooks,
    )
    report.notes = list(select_providers("auto").notes)
    return report


def bench_stage(
    loaded: LoadedModel,
    converted: Converted,
    inputs: tuple[torch.Tensor, ...],
    config: Any,
    folded: Path | None = None,
    progress: Steps | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Latency of the original and the folded model (from its saved file ``folded`` when given),
    interleaved, on every provider and batch size; ``progress`` hears of each timing round."""
    from bnfold.bench import bench_onnx, bench_torch, speedups

    sizes = batch_sizes(converted, inputs, config.batches)
    spec = InputSpec.of(inputs)

    def factory(batch: int) -> tuple[np.ndarray, ...]:
        return tuple(as_numpy(t) for t in make_inputs(spec.with_batch(batch), seed=0))

    selection = select_providers(",".join(config.providers))
    with tempfile.TemporaryDirectory(prefix="bnfold-") as folder:
        models = {"folded": session_source(folded or converted.exported.model, Path(folder) / "folded")}
        if converted.original_onnx:  # timed first, as the baseline
            original = session_source(converted.original_onnx(), Path(folder) / "original", in_place=True)
            models = {"original": original, **models}
        results = bench_onnx(
            models, factory, providers=selection.providers, threads=config.threads, batch_sizes=sizes, progress=progress
        )
    if isinstance(converted.folded, torch.nn.Module) and isinstance(converted.original, torch.nn.Module):
        results += bench_torch(
            {"original": converted.original, "folded": converted.folded},
            factory,
            threads=config.threads,
            batch_sizes=sizes,
            progress=progress,
        )
    return [r.to_json() for r in results], [s.to_json() for s in speedups(results)]


def ignored_batches(converted: Converted, inputs: tuple[torch.Tensor, ...], requested: tuple[int, ...]) -> str | None:
    """Why some ``--batch`` sizes cannot be timed (the exported batch dimension is fixed), or None."""
    sizes = batch_sizes(converted, inputs, requested)
    left_out = [b for b in requested if b not in sizes]
    if not left_out:
        return None
    return (
        f"--batch {','.join(map(str, left_out))} not timed: the model's batch dimension is fixed at "
        f"{sizes[0]}; timed at batch {sizes[0]}"
    )


def batch_sizes(converted: Converted, inputs: tuple[torch.Tensor, ...], requested: tuple[int, ...]) -> list[int]:
    """The requested batch sizes when the exported batch dimension is dynamic, else the example's."""
    example = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else 1
    graph_inputs = converted.exported.model.graph.input
    dims = graph_inputs[0].type.tensor_type.shape.dim if graph_inputs else []
    dynamic = bool(dims) and bool(dims[0].dim_param)
    return list(requested) if requested and dynamic else [example]
