"""The parity matrix: every candidate against an fp64 reference, and each stage against the one before it.

The standard matrix (:func:`standard_candidates`), in pipeline order:

=====================================  ================  =========================
candidate                              stage             stage check against
=====================================  ================  =========================
original fp32                          baseline          (none: fp32 noise)
folded fp32 (torch)                    fold              original fp32
onnxruntime CPU (optimizations off)    export            folded fp32 (torch)
onnxruntime CPU (optimizations all)    ort-optimization  onnxruntime CPU (opt. off)
onnxruntime CUDA                       provider          onnxruntime CPU (opt. all)
=====================================  ================  =========================

Metrics aggregate over all batches (maxima over batches, means weighted by element count), one check per
(reference, candidate, output) with ``batch_source`` "all"; ``per_batch=True`` gives one check per batch
instead. Top-k agreement is against the predictions of the candidate with stage "baseline" (the
original fp32 model), or of the check's reference when there is no such candidate; likewise
``baseline_max_abs_err`` and ``error_ratio`` are only set when a baseline candidate exists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from torch import nn
from typing_extensions import Unpack

from bnfold.errors import one_line
from bnfold.verify.metrics import ErrorAccumulator
from bnfold.verify.providers import CUDA_MISSING, ProviderSelection, select_providers
from bnfold.verify.report import (
    BASELINE,
    PROVIDER,
    ParityCheck,
    ParityReport,
)
from bnfold.verify.runners import LazyRunner, Runner, torch_runner
from bnfold.verify.tolerance import (
    NOISE_FACTOR,
    NOISE_RULE,
    RULE,
    OutputKey,
    Tolerance,
    Tolerances,
    check_output_keys,
)

REFERENCE = "original fp64 (torch)"
ORIGINAL = "original fp32"
FOLDED = "folded fp32 (torch)"
ORT_OFF = "onnxruntime CPU (optimizations off)"
ORT_ALL = "onnxruntime CPU (optimizations all)"
ORT_CUDA = "onnxruntime CUDA"

Batch = tuple[str, Sequence[np.ndarray]]


@dataclass(frozen=True)
class Candidate:
    """A model run to check: its ``stage`` and, for the stage check, the candidate it must agree with.

    ``dtype`` picks the default tolerance (see :class:`~bnfold.verify.tolerance.Tolerance`).
    """

    name: str
    runner: Runner
    stage: str
    compare_against: str | None = None
    dtype: str = "float32"
    before_reference: bool = False
    """Run (and released) before the reference: a runner whose model the reference should not run beside."""


Steps = Callable[[str, int, int], None]
"""Called as runs finish: (what is counted, done, total)."""
ReferenceSink = Callable[[int, list[np.ndarray]], None]
"""Given the reference outputs of each batch (its index, the outputs) as soon as they are computed."""
OutputNames = Sequence[str] | Callable[[], Sequence[str] | None] | None


@dataclass(frozen=True)
class ParitySettings:
    """What a parity run is checked on and by: the named input batches, the tolerance (None: by dtype)
    and per-output overrides, one check per batch or over all of them, and the hooks of :func:`run_parity`."""

    batches: Sequence[Batch]
    tolerance: Tolerance | None = None
    per_output: Mapping[OutputKey, Tolerance] | None = None
    progress: Steps | None = None
    on_reference: ReferenceSink | None = None
    per_batch: bool = False


class ParityKeywords(TypedDict, total=False):
    """The fields of :class:`ParitySettings` but the batches, as keywords (:func:`verify_parity`)."""

    tolerance: Tolerance | None
    per_output: Mapping[OutputKey, Tolerance] | None
    progress: Steps | None
    on_reference: ReferenceSink | None
    per_batch: bool


def run_parity(
    reference: Runner,
    candidates: Sequence[Candidate],
    settings: ParitySettings,
    output_names: OutputNames = None,
    reference_name: str = REFERENCE,
) -> ParityReport:
    """Run the reference and every candidate on every batch of ``settings`` and compare them.

    The tolerance of ``settings`` (default: by each candidate's dtype) applies to every output unless its
    ``per_output`` overrides it by output name or index; ``output_names`` may be a callable, asked once every
    runner has run. A candidate whose runner raises fails all its checks with the error quoted; the
    reference raising propagates. Runners with a ``release()`` (:class:`~bnfold.verify.runners.LazyRunner`)
    are released as soon as their outputs are in. ``progress`` hears of each model run on a batch;
    ``on_reference`` gets the reference outputs of each batch (to save them, e.g.) without their being kept
    any longer.
    """
    if not settings.batches:
        raise ValueError("run_parity needs at least one input batch")
    outputs, errors = _run_every(reference, candidates, settings, reference_name)
    names = _names(output_names) if callable(output_names) else output_names
    if settings.per_output:  # a key that names no output would be ignored without a word
        count = len(outputs[reference_name][0])
        check_output_keys([str(k) for k in settings.per_output], list(names or [str(i) for i in range(count)]))
    matrix = _Matrix(outputs, errors, [name for name, _ in settings.batches], reference_name, names)
    checks = _checks(matrix, candidates, settings, reference_name)
    tolerance = settings.tolerance
    default = tolerance or Tolerance.for_dtype(_first_dtype(candidates))
    inputs = [{"source": name, "batch": _batch_size(arrays)} for name, arrays in settings.batches]
    return ParityReport(reference_name, default, checks, inputs, rule=NOISE_RULE if tolerance is None else RULE)


def _run_every(
    reference: Runner, candidates: Sequence[Candidate], settings: ParitySettings, reference_name: str
) -> tuple[dict[str, list[list[np.ndarray]]], dict[str, str]]:
    """The outputs of the reference and of every candidate on every batch, each runner released as soon as
    its outputs are in; why each candidate that could not run did not."""
    batches = settings.batches
    counter = _Counter(settings.progress, (1 + len(candidates)) * len(batches))
    ran: dict[str, tuple[list[list[np.ndarray]], str | None]] = {}
    for cand in [c for c in candidates if c.before_reference]:
        ran[cand.name] = _run_and_release(cand.runner, batches, counter)
    outputs = {reference_name: _run_reference(reference, batches, counter, settings.on_reference)}
    _release(reference)
    for cand in [c for c in candidates if not c.before_reference]:
        ran[cand.name] = _run_and_release(cand.runner, batches, counter)
    outputs.update({cand.name: ran[cand.name][0] for cand in candidates})
    errors = {name: error for name, (_, error) in ran.items() if error}
    return outputs, errors


def _run_and_release(
    runner: Runner, batches: Sequence[Batch], counter: _Counter
) -> tuple[list[list[np.ndarray]], str | None]:
    results = _run_all(runner, batches, counter)
    _release(runner)
    return results


def _checks(
    matrix: _Matrix, candidates: Sequence[Candidate], settings: ParitySettings, reference_name: str
) -> list[ParityCheck]:
    """Every candidate against the reference and against the stage before it; the baseline's errors filled
    in and, under default tolerances, the noise rule applied."""
    baseline = _baseline(candidates)
    checks = []
    for cand in candidates:
        tolerances = Tolerances(settings.tolerance or Tolerance.for_dtype(cand.dtype), settings.per_output)
        checks += matrix.compare(cand, reference_name, tolerances, settings.per_batch, baseline)
        if cand.compare_against:
            checks += matrix.compare(cand, cand.compare_against, tolerances, settings.per_batch, baseline)
    _fill_baseline_errors(checks, baseline, reference_name)
    if settings.tolerance is None:
        _apply_noise_rule(checks, baseline, reference_name, matrix.labels(settings.per_output or {}))
    return checks


class _Counter:
    """Counts model runs for ``progress``."""

    def __init__(self, progress: Steps | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress("model runs", self.done, self.total)


def _run_reference(
    reference: Runner, batches: Sequence[Batch], counter: _Counter, on_reference: ReferenceSink | None
) -> list[list[np.ndarray]]:
    outputs = []
    for index, (_, arrays) in enumerate(batches):
        outputs.append(reference(tuple(arrays)))
        if on_reference is not None:
            on_reference(index, outputs[-1])
        counter.tick()
    return outputs


class _Matrix:
    """The outputs of every runner on every batch, and how to compare two of them."""

    def __init__(
        self,
        outputs: dict[str, list[list[np.ndarray]]],
        errors: dict[str, str],
        batch_names: list[str],
        reference: str,
        output_names: Sequence[str] | None,
    ) -> None:
        self.outputs, self.errors, self.batch_names = outputs, errors, batch_names
        self.count = len(outputs[reference][0])
        self.names = list(output_names) if output_names and len(output_names) == self.count else None

    def label(self, k: int) -> str:
        """How checks name output ``k``: its name, else its index."""
        return self.names[k] if self.names else str(k)

    def labels(self, keys: Mapping[OutputKey, Tolerance]) -> set[str]:
        """The outputs the per-output tolerances ``keys`` name (by name or index, as :class:`Tolerances`
        reads them), each as checks name it."""
        found = set()
        for k in range(self.count):
            name = self.names[k] if self.names else None
            if (name is not None and name in keys) or k in keys or str(k) in keys:
                found.add(self.label(k))
        return found

    def compare(
        self, cand: Candidate, against: str, tolerances: Tolerances, per_batch: bool, baseline: str | None
    ) -> list[ParityCheck]:
        every = list(range(len(self.batch_names)))
        groups = [[i] for i in every] if per_batch else [every]
        return [
            self._check(cand, against, k, group, tolerances, baseline) for group in groups for k in range(self.count)
        ]

    def _check(
        self, cand: Candidate, against: str, k: int, group: list[int], tolerances: Tolerances, baseline: str | None
    ) -> ParityCheck:
        name = self.names[k] if self.names else None
        tol = tolerances.for_output(k, name)
        acc = ErrorAccumulator(tol)
        acc.error = self.errors.get(cand.name) or self.errors.get(against)
        predictions = self.outputs.get(baseline) if baseline not in (None, cand.name) else None
        for i in group if acc.error is None else []:
            actual, expected = self.outputs[cand.name][i], self.outputs[against][i]
            if len(actual) != len(expected):
                acc.error = f"{len(actual)} outputs, the reference has {len(expected)}"
                break
            acc.add(
                actual[k],
                expected[k],
                self.batch_names[i],
                predictions[i][k] if predictions and k < len(predictions[i]) else None,
            )
        source = "all" if len(group) > 1 else self.batch_names[group[0]]
        return ParityCheck.of(against, cand.name, self.label(k), source, cand.stage, acc)


def _run_all(
    runner: Runner, batches: Sequence[Batch], counter: _Counter | None = None
) -> tuple[list[list[np.ndarray]], str | None]:
    results = []
    try:
        for _, arrays in batches:
            results.append(runner(tuple(arrays)))
            if counter is not None:
                counter.tick()
        return results, None
    except Exception as exc:  # a candidate that cannot run fails its checks, with the reason
        if counter is not None:
            counter.done += len(batches) - len(results) - 1
            counter.tick()
        return [], f"could not run: {one_line(exc)}"


def _release(runner: Runner) -> None:
    release = getattr(runner, "release", None)
    if callable(release):
        release()


def _names(names: Callable[[], Sequence[str] | None]) -> Sequence[str] | None:
    try:
        return names()
    except Exception:  # a runner that could not be built has no names; its checks already fail
        return None


def _baseline(candidates: Sequence[Candidate]) -> str | None:
    return next((c.name for c in candidates if c.stage == BASELINE), None)


def _first_dtype(candidates: Sequence[Candidate]) -> str:
    return candidates[0].dtype if candidates else "float32"


def _own_errors(checks: list[ParityCheck], baseline: str, reference: str) -> dict[tuple[str, str], float | None]:
    """The original fp32 model's own max abs error against the reference, by (output, batch source)."""
    return {
        (c.output, c.batch_source): c.max_abs_err
        for c in checks
        if c.candidate == baseline and c.reference == reference
    }


def _fill_baseline_errors(checks: list[ParityCheck], baseline: str | None, reference: str) -> None:
    """Set ``baseline_max_abs_err`` and ``error_ratio`` on every check against the reference."""
    if baseline is None:
        return
    own = _own_errors(checks, baseline, reference)
    for check in checks:
        if check.reference != reference:
            continue
        base = own.get((check.output, check.batch_source))
        check.baseline_max_abs_err = base
        check.error_ratio = _ratio(check.max_abs_err, base)


def _apply_noise_rule(checks: list[ParityCheck], baseline: str | None, reference: str, overridden: set[str]) -> None:
    """Under default tolerances, pass a check whose error is within fp32 noise of this model at that output.

    The yardstick is the original fp32 model's own max abs error against the fp64 reference on the same
    inputs; a check passes when its max abs error is at most :data:`NOISE_FACTOR` times it. Outputs with a
    tolerance of the user's (``overridden``: the outputs as checks name them) keep the plain rule."""
    if baseline is None:
        return
    own = _own_errors(checks, baseline, reference)
    for check in checks:
        base = own.get((check.output, check.batch_source))
        if check.output in overridden:
            continue
        if base is None or not np.isfinite(base) or base <= 0.0 or check.error:
            continue
        check.noise_bound = NOISE_FACTOR * base
        err = check.max_abs_err
        if not check.passed and not check.nan_count and err is not None and np.isfinite(err):
            check.passed = err <= check.noise_bound


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or np.isnan(value) or np.isnan(base):
        return None
    if base == 0.0:
        return 1.0 if value == 0.0 else None
    return value / base


def _batch_size(arrays: Sequence[np.ndarray]) -> int | None:
    first = np.asarray(arrays[0]) if len(arrays) else None
    return int(first.shape[0]) if first is not None and first.ndim else None


def standard_candidates(
    original: nn.Module,
    folded: nn.Module,
    onnx_model: str | Path | bytes,
    providers: ProviderSelection | None = None,
    threads: int | None = None,
) -> tuple[list[Candidate], list[str]]:
    """The standard matrix (see the module docstring) and notes on providers left out.

    The onnxruntime CPU sessions are built when first run (:class:`LazyRunner`). CUDA is included when
    ``providers`` selected it and the session really runs on CUDA.
    """
    from bnfold.verify.chain import parity_chain

    selection = providers or select_providers("cpu")
    chain = parity_chain(original, onnx_model, folded=folded, providers=selection, threads=threads)
    return chain.candidates, chain.notes


def verify_parity(
    original: nn.Module,
    folded: nn.Module,
    onnx_model: str | Path | bytes,
    batches: Sequence[Batch],
    providers: str | Sequence[str] | ProviderSelection = "auto",
    threads: int | None = None,
    **settings: Unpack[ParityKeywords],
) -> ParityReport:
    """The whole standard matrix in one call: fp64 reference, candidates, checks, provider notes.
    ``batches`` and the keywords ``settings`` (``tolerance``, ``per_output``, ``per_batch``, ``progress``,
    ``on_reference``) are the :class:`ParitySettings` it runs on (see :func:`run_parity`).

    One heavy model is alive at a time: the fp64 copy of the original, then each onnxruntime session."""
    selection = providers if isinstance(providers, ProviderSelection) else select_providers(providers)
    candidates, notes = standard_candidates(original, folded, onnx_model, selection, threads)
    reference = LazyRunner(lambda: torch_runner(original, torch.float64))
    report = run_parity(
        reference,
        candidates,
        ParitySettings(batches, **settings),
        output_names=lambda: candidates[2].runner.output_names,  # type: ignore[attr-defined]
    )
    report.notes = notes
    report.cuda = cuda_block(any(c.stage == PROVIDER for c in candidates), notes)
    return report


def cuda_block(used: bool, notes: Sequence[str]) -> dict[str, object]:
    """The report's ``parity.cuda``: whether CUDA results are in, and why not."""
    if used:
        return {"available": True, "note": "CUDA results included"}
    return {"available": False, "note": CUDA_MISSING if CUDA_MISSING in notes else "CUDA not requested"}
