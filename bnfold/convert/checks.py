"""Parity and latency for a conversion: which runners, on which inputs, against what."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnfold.bench.timing import LatencyResult
from bnfold.convert.config import BenchConfig, ParityConfig
from bnfold.convert.paths import Converted
from bnfold.errors import InputSpecError
from bnfold.export import session_source
from bnfold.load import InputSpec, LoadedModel, load_data, make_inputs
from bnfold.load.inputs import dims_text, fits
from bnfold.report.document import ParitySection, SpeedupEntry, timed
from bnfold.verify import Tolerance, select_providers
from bnfold.verify.chain import ParityChain, parity_chain
from bnfold.verify.matrix import FOLDED, ParitySettings, ReferenceSink, Steps, cuda_block
from bnfold.verify.report import PROVIDER
from bnfold.verify.runners import LazyRunner, return_freed_memory, torch_runner
from bnfold.verify.tolerance import check_output_keys

Batches = list[tuple[str, tuple[np.ndarray, ...]]]


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as numpy; bfloat16 (which numpy lacks) as the float32 holding the same values exactly."""
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def parity_batches(inputs: tuple[torch.Tensor, ...], config: ParityConfig, dims: Dims | None = None) -> Batches:
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
    if not fits(dims, shape):
        raise InputSpecError(
            f"--data {path}: array {index} has shape {'x'.join(map(str, shape)) or 'scalar'}, input "
            f"{index} of the model takes {dims_text(dims)}" + (" (? free)" if None in dims else "")
        )
    return as_numpy(data.to(example.dtype))


def tolerance_of(config: ParityConfig) -> tuple[Tolerance | None, dict[str | int, Tolerance]]:
    """The parity tolerance (None: by dtype) and per-output overrides from the config (whose values were
    checked when it was built)."""
    default = None
    if config.atol is not None or config.rtol is not None:
        base = Tolerance.for_dtype("float32")
        default = Tolerance(
            config.atol if config.atol is not None else base.atol, config.rtol if config.rtol is not None else base.rtol
        )
    per_output: dict[str | int, Tolerance] = {
        int(k) if isinstance(k, int) or k.isdigit() else k: Tolerance(a, r) for k, a, r in config.tolerances
    }
    return default, per_output


def parity_settings(
    batches: Batches, config: ParityConfig, progress: Steps | None = None, on_reference: ReferenceSink | None = None
) -> ParitySettings:
    """The parity settings of a run: ``batches``, the config's tolerances, and the hooks of
    :func:`~bnfold.verify.run_parity`."""
    tolerance, per_output = tolerance_of(config)
    return ParitySettings(batches, tolerance, per_output, progress, on_reference)


def verify_stage(
    loaded: LoadedModel,
    converted: Converted,
    settings: ParitySettings,
    config: ParityConfig,
    folded: Path | None = None,
    optimized: Path | None = None,
) -> ParitySection:
    """The parity section of the report, by the path the model took. The folded ONNX model is run from
    ``folded`` (its saved file) when given; with ``optimized`` (the ``--save-optimized`` file), that file
    too, run as saved (no further onnxruntime rewrites)."""
    check_output_keys([key for key, _, _ in config.tolerances], [o.name for o in converted.exported.model.graph.output])
    return_freed_memory()  # what export and save freed, before parity builds its runners beside it
    with tempfile.TemporaryDirectory(prefix="bnfold-") as folder:
        chain = _chain(loaded.format, converted, config, folded, optimized, Path(folder))
        report = chain.run(settings, _output_names(loaded.format, chain))
    if loaded.format == "torchscript":
        report.notes = list(select_providers("auto").notes)
    elif loaded.format != "onnx":
        report.notes = chain.notes
        report.cuda = cuda_block(any(c.stage == PROVIDER for c in chain.candidates), chain.notes)
    return ParitySection.of(report)


def _chain(
    model_format: str,
    converted: Converted,
    config: ParityConfig,
    folded: Path | None,
    optimized: Path | None,
    folder: Path,
) -> ParityChain:
    """The parity chain for the path the model took; models past protobuf's limit that are not files yet are
    written into ``folder``."""
    onnx = session_source(folded if folded is not None else converted.exported.model, folder / "folded")
    if model_format == "onnx":
        original = session_source(converted.original, folder / "original")
        return parity_chain(original, onnx, optimized=optimized, threads=config.threads)
    if model_format == "torchscript":
        unfolded = (
            session_source(converted.original_onnx(), folder / "original", in_place=True)
            if converted.original_onnx
            else None
        )
        return parity_chain(
            converted.original, onnx, unfolded=unfolded or onnx, optimized=optimized, threads=config.threads
        )
    providers = select_providers(",".join(config.providers))
    chain = parity_chain(
        converted.original,
        onnx,
        folded=converted.folded,
        optimized=optimized,
        providers=providers,
        threads=config.threads,
    )
    if converted.release_after_parity:  # latency off: let the folded module go once its outputs are in
        _release_after_its_run(chain, converted)
    return chain


def _release_after_its_run(chain: ParityChain, converted: Converted) -> None:
    """Run the folded module first, and release it after its runs: the float64 reference and the onnxruntime
    sessions then do not run beside it (the original stays, for the reference and a second parity run;
    reading ``converted.folded`` folds again if something needs the module)."""
    for index, candidate in enumerate(chain.candidates):
        if candidate.name == FOLDED:
            runner = LazyRunner(lambda: torch_runner(converted.folded), on_release=converted.release_folded)
            chain.candidates[index] = dataclasses.replace(candidate, runner=runner, before_reference=True)


def _output_names(model_format: str, chain: ParityChain) -> Callable[[], Any] | None:
    """Output names for the report: an ONNX original's, else the folded export's (none for TorchScript)."""
    if model_format == "torchscript":
        return None
    runner = chain.reference if model_format == "onnx" else chain.candidates[2].runner
    return lambda: getattr(runner, "output_names", None)


def bench_stage(
    loaded: LoadedModel,
    converted: Converted,
    inputs: tuple[torch.Tensor, ...],
    config: BenchConfig,
    folded: Path | None = None,
    progress: Steps | None = None,
) -> tuple[list[LatencyResult], list[SpeedupEntry]]:
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
    return timed(results, speedups(results))


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
