"""``bnfold bench`` for ONNX files the user already has: one model timed, or two interleaved with the speedup."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from bnfold.bench.onnx_latency import bench_onnx
from bnfold.bench.speedup import speedups
from bnfold.bench.timing import LatencyResult
from bnfold.convert.checks import as_numpy
from bnfold.convert.config import ConvertConfig
from bnfold.convert.onnx_input import check_loaded_onnx
from bnfold.errors import InputSpecError
from bnfold.library_logs import caught_warnings
from bnfold.load import InputSpec, LoadedModel, make_inputs
from bnfold.load.loaded import loaded_source
from bnfold.verify.providers import require_providers, select_providers

if TYPE_CHECKING:
    from bnfold.report.document import SpeedupEntry


def bench_files(paths: list[Path], config: ConvertConfig) -> tuple[list[LatencyResult], list[SpeedupEntry]]:
    """Latency of one ONNX model, or of two interleaved (the first is the baseline), as the report's
    ``latency`` and ``speedup`` entries."""
    from bnfold.convert import resolve_inputs
    from bnfold.report.document import timed

    require_providers(config.providers)
    loaded = [_onnx_only(p) for p in paths]
    check_loaded_onnx(*loaded)
    _check_same_inputs(paths, loaded)
    inputs = resolve_inputs(loaded[0], config)
    batches = tuple(config.batches) or (int(inputs[0].shape[0]),)
    for path, model in zip(paths, loaded, strict=True):
        _check_batches(path, model, batches, given=bool(config.batches))
    spec = InputSpec.of(inputs)
    names = ["original", "folded"] if len(paths) == 2 else [paths[0].stem]
    models = {name: loaded_source(m) for name, m in zip(names, loaded, strict=True)}
    with caught_warnings() as skipped:
        results = bench_onnx(
            models,
            lambda b: tuple(as_numpy(t) for t in make_inputs(spec.with_batch(b), 0)),
            providers=select_providers(",".join(config.providers)).providers,
            threads=config.threads,
            batch_sizes=list(batches),
        )
    if not results:  # every provider asked for was skipped: nothing was timed
        raise InputSpecError(f"nothing to time: {'; '.join(skipped)}; pick another provider with --providers")
    for note in skipped:
        warnings.warn(note, RuntimeWarning, stacklevel=2)
    return timed(results, speedups(results) if len(paths) == 2 else [])


def _check_same_inputs(paths: list[Path], loaded: list[LoadedModel]) -> None:
    """Two models timed against each other take the same number of inputs, each of the same rank."""
    from bnfold.convert.checks import graph_dims

    if len(loaded) < 2:
        return
    ranks = [[len(d) for d in graph_dims(m.onnx_model)] for m in loaded]
    if ranks[0] != ranks[1]:
        said = [
            f"{p} takes {len(r)} input(s) of rank {', '.join(map(str, r)) or '-'}"
            for p, r in zip(paths, ranks, strict=True)
        ]
        raise InputSpecError(f"{'; '.join(said)}: bnfold bench compares two versions of one model, fed the same inputs")


def _check_batches(path: Path, model: LoadedModel, batches: tuple[int, ...], given: bool = True) -> None:
    """Batch sizes a model with a fixed batch cannot take are refused (``given``: by ``--batch``, else the
    example's batch, which every model is timed at)."""
    from bnfold.convert.checks import graph_dims

    fixed = next(iter(graph_dims(model.onnx_model)), (None,))[:1]
    if fixed and fixed[0] is not None and any(b != fixed[0] for b in batches):
        asked = f"--batch {','.join(map(str, batches))}" if given else f"timed at batch {batches[0]} (the example's)"
        raise InputSpecError(
            f"{asked}: {path} has a fixed batch of {fixed[0]}; give --batch {fixed[0]} or export the model with "
            "a dynamic batch"
        )


def _onnx_only(path: Path) -> LoadedModel:
    """An ONNX file, read; any other model file is refused from its format alone, without being loaded."""
    from bnfold.load.detect import check_readable, detect_format
    from bnfold.load.onnx_files import read_onnx

    check_readable(path)
    detected = detect_format(path)
    if detected.onnx_model is None:
        raise InputSpecError(
            f"{path} is a {detected.kind} file: bnfold bench times ONNX files; convert the model first (bnfold convert)"
        )
    loaded = read_onnx(path, detected.onnx_model)
    loaded.path = path
    return loaded


__all__ = ["bench_files"]
