"""Latency of ONNX models in onnxruntime, original and folded timed interleaved.

One session per (model, provider), created once (``session_create_ms``) and reused for every batch
size. On GPU providers inputs and outputs are bound to device memory with IO binding, so host/device
copies are not part of the timing.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidGraph, NotImplemented
from typing_extensions import Unpack

from bnfold.bench.cpu import default_threads
from bnfold.bench.inputs import InputSource, batches_of
from bnfold.bench.timing import LatencyResult, RoundsKeywords, interleave
from bnfold.errors import one_line
from bnfold.verify.runners import OrtRunner

BACKEND = "onnxruntime"
UNSUPPORTED = (InvalidGraph, NotImplemented)
"""What onnxruntime raises for a graph a provider has no kernel for: that provider is skipped."""

_DEVICE_OF = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}


def binding_device(provider: str) -> str | None:
    """The ``OrtValue`` device to bind inputs and outputs to for ``provider``; None: plain ``run``."""
    return _DEVICE_OF.get(provider)


def bound_call(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], device: str) -> Callable[[], None]:
    """A call running ``session`` on inputs already copied to ``device``, outputs left there."""
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, device)
    return lambda: session.run_with_iobinding(binding)


def timed_call(runner: OrtRunner, inputs: Sequence[np.ndarray], provider: str) -> Callable[[], object]:
    """The call to time: IO binding on device providers, ``session.run`` otherwise."""
    feeds = runner.feeds(inputs)
    device = binding_device(provider)
    if device is not None:
        return bound_call(runner.session, feeds, device)
    return lambda: runner.session.run(None, feeds)


def bench_onnx(
    models: Mapping[str, str | Path | bytes],
    inputs: InputSource,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
    batch_sizes: Sequence[int] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    **rounds: Unpack[RoundsKeywords],
) -> list[LatencyResult]:
    """Time each ONNX model (e.g. ``{"original": ..., "folded": ...}``) on each provider and batch size.

    ``threads`` defaults to one per physical core. Sessions use full graph optimisation, as deployed. A
    provider onnxruntime silently replaces (e.g. CUDA on a machine without a GPU) is skipped with a
    warning rather than reported under the wrong name. ``progress`` hears of each timing round:
    (``"onnxruntime CPU batch 8"``, rounds done, rounds expected). ``rounds`` is how long each is timed:
    the fields of :class:`~bnfold.bench.timing.Rounds` (``warmup``, ``min_runs``, ``min_seconds``,
    ``max_runs``) as keywords.
    """
    threads = threads or default_threads()
    per_batch = batches_of(inputs, batch_sizes)
    results: list[LatencyResult] = []
    for provider in providers:
        sessions, create_ms = _sessions(models, provider, threads)
        if sessions is None:
            continue
        for batch, arrays in per_batch.items():
            calls = {name: timed_call(runner, arrays, provider) for name, runner in sessions.items()}
            samples = interleave(
                calls, on_round=rounds_of(progress, f"{BACKEND} {_short(provider)} batch {batch}"), **rounds
            )
            results += [
                dataclasses.replace(
                    LatencyResult.of(
                        samples[name], backend=BACKEND, provider=provider, model=name, batch=batch, threads=threads
                    ),
                    session_create_ms=create_ms[name],
                )
                for name in sessions
            ]
    return results


def rounds_of(progress: Callable[[str, int, int], None] | None, label: str) -> Callable[[int, int], None] | None:
    """An ``interleave`` round callback telling ``progress`` about ``label``'s rounds."""
    if progress is None:
        return None
    return lambda done, total: progress(label, done, total)


def _short(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider")


def _sessions(
    models: Mapping[str, str | Path | bytes], provider: str, threads: int
) -> tuple[dict[str, OrtRunner] | None, dict[str, float]]:
    sessions: dict[str, OrtRunner] = {}
    create_ms: dict[str, float] = {}
    chain = (provider,) if provider == "CPUExecutionProvider" else (provider, "CPUExecutionProvider")
    for name, model in models.items():
        t0 = time.perf_counter()
        try:
            sessions[name] = OrtRunner(model, chain, "all", threads)
        except UNSUPPORTED as exc:  # e.g. bfloat16 Conv, which the CPU provider has no kernel for
            warnings.warn(
                f"onnxruntime cannot run the {name} model on {provider} ({one_line(exc)}); its latency is not measured",
                RuntimeWarning,
                stacklevel=3,
            )
            return None, {}
        create_ms[name] = (time.perf_counter() - t0) * 1e3
        if sessions[name].session.get_providers()[0] != provider:
            warnings.warn(
                f"{provider} is not usable here (onnxruntime fell back to "
                f"{sessions[name].session.get_providers()[0]}); its latency is not measured",
                RuntimeWarning,
                stacklevel=3,
            )
            return None, {}
    return sessions, create_ms
