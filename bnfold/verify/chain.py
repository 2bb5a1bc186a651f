"""The parity chain: the candidates a conversion (or a user's pair of models) is checked with, built once.

From whichever artifacts exist, in pipeline order: the original in fp32 (baseline), the folded PyTorch
module (fold), the unfolded export, the folded ONNX model without and with onnxruntime's rewrites
(export or fold, then ort-optimization), the ``--save-optimized`` file, and CUDA (provider). Each
candidate is checked against the one before it; names come from :mod:`bnfold.verify.matrix`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypedDict

import torch
from torch import nn
from typing_extensions import Unpack

from bnfold.verify.matrix import (
    FOLDED,
    ORIGINAL,
    ORT_ALL,
    ORT_CUDA,
    ORT_OFF,
    REFERENCE,
    Candidate,
    OutputNames,
    ParitySettings,
    run_parity,
)
from bnfold.verify.providers import CPU, CUDA, CUDA_MISSING, ProviderSelection
from bnfold.verify.report import BASELINE, EXPORT, FOLD, ORT_OPTIMIZATION, PROVIDER, ParityReport
from bnfold.verify.runners import LazyRunner, Optimization, Runner, module_dtype, ort_runner, torch_runner
from bnfold.verify.widen import WIDENED_NOTE, holds_bfloat16, widened

Model = nn.Module | str | Path | bytes
"""A PyTorch module, or an ONNX model as a file or serialised bytes."""

CANDIDATE = "candidate fp32 (torch)"
UNFOLDED = f"unfolded {ORT_OFF}"
OPTIMIZED = "onnxruntime CPU (saved optimized model)"
ORIGINAL_ORT = f"original {ORT_OFF}"


@dataclass(frozen=True)
class ParityChain:
    """The fp64 (or, for an ONNX original, unoptimised onnxruntime) reference, the candidates in pipeline
    order, and notes on providers left out."""

    reference: Runner
    reference_name: str
    candidates: list[Candidate]
    notes: list[str] = field(default_factory=list)

    def run(self, settings: ParitySettings, output_names: OutputNames = None) -> ParityReport:
        """The parity report of every candidate on ``settings``' batches (see :func:`~bnfold.verify.run_parity`)."""
        return run_parity(
            self.reference, self.candidates, settings, output_names=output_names, reference_name=self.reference_name
        )


@dataclass(frozen=True)
class Sessions:
    """How a chain's onnxruntime sessions are made: the providers selected (None: the CPU alone), their
    threads, and whether each is built only when first run (``lazy``)."""

    providers: ProviderSelection | None = None
    threads: int | None = None
    lazy: bool = True


class SessionKeywords(TypedDict, total=False):
    """The fields of :class:`Sessions` as keywords (:func:`parity_chain`)."""

    providers: ProviderSelection | None
    threads: int | None
    lazy: bool


def parity_chain(
    original: Model,
    onnx: str | Path | bytes | None = None,
    *,
    folded: nn.Module | None = None,
    unfolded: str | Path | bytes | None = None,
    optimized: Path | None = None,
    candidate: bool = False,
    **sessions: Unpack[SessionKeywords],
) -> ParityChain:
    """The chain baseline -> fold -> export -> ort-optimization -> provider from the artifacts given.

    ``onnx`` is the folded ONNX model (or, with ``candidate``, a user's model of unknown making: it is then
    checked at the export stage, and a ``folded`` module is named as a candidate). ``unfolded`` is the
    export before folding, which isolates the fold; ``optimized`` is run as saved. CUDA is included when
    ``providers`` selected it and the session really runs on CUDA. onnxruntime sessions (but CUDA's,
    which is checked now) are built when first run unless ``lazy`` is False. ``sessions`` are the fields of
    :class:`Sessions` (``providers``, ``threads``, ``lazy``) as keywords.
    """
    made = Sessions(**sessions)
    chain = _Builder(Precision.of(original), made)
    if isinstance(original, nn.Module):
        chain.add_torch(ORIGINAL, original, BASELINE)
    if folded is not None:
        chain.add_torch(CANDIDATE if candidate else FOLDED, folded, FOLD)
    if unfolded is not None:
        chain.add(UNFOLDED, chain.session(unfolded, "disabled"), EXPORT)
    notes: list[str] = []
    if onnx is not None:
        onnx_original = not isinstance(original, nn.Module)
        fold_here = not candidate and (onnx_original or unfolded is not None)
        prefix = "folded " if onnx_original and not candidate else ""
        notes = chain.add_onnx(onnx, prefix, FOLD if fold_here else EXPORT, optimized)
    notes += [WIDENED_NOTE] if chain.precision.widen else []
    return ParityChain(*_reference(original, made.lazy, chain.precision), chain.candidates, notes)


@dataclass
class _Builder:
    """A chain being built: its candidates so far, each checked against the one before it unless told."""

    precision: Precision
    sessions: Sessions
    candidates: list[Candidate] = field(default_factory=list)

    def session(self, model: str | Path | bytes, optimization: Optimization) -> Runner:
        """An onnxruntime CPU session, built now or when first run (``lazy``)."""
        source = self.precision.cpu_source(model)
        build = partial(ort_runner, source, (CPU,), optimization, self.sessions.threads)
        return LazyRunner(build) if self.sessions.lazy else build()

    def add(self, name: str, runner: Runner, stage: str, against: str | None = None) -> None:
        against = against if against is not None else _last(self.candidates)
        self.candidates.append(Candidate(name, runner, stage, against, self.precision.name))

    def add_torch(self, name: str, module: nn.Module, stage: str) -> None:
        self.add(self.precision.named(name), torch_runner(module, self.precision.dtype), stage)

    def add_onnx(self, onnx: str | Path | bytes, prefix: str, stage: str, optimized: Path | None) -> list[str]:
        """The ONNX model without and with onnxruntime's rewrites, CUDA, the ``--save-optimized`` file; the
        provider notes."""
        off, full = prefix + ORT_OFF, prefix + ORT_ALL
        self.add(off, self.session(onnx, "disabled"), stage)
        self.add(full, self.session(onnx, "all"), ORT_OPTIMIZATION, off)
        notes = _add_cuda(self.candidates, onnx, self.sessions.providers, self.sessions.threads)
        if optimized is not None:
            self.add(OPTIMIZED, self.session(optimized, "disabled"), ORT_OPTIMIZATION, off)
        return notes


_SHORT = {torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Precision:
    """What a chain computes in: a float16 or bfloat16 model in its own dtype (its candidates named so and
    judged at that dtype's default tolerance), any other in float32; ``widen``: the ONNX model holds
    bfloat16 tensors, which onnxruntime's CPU provider runs widened to float32 (:mod:`.widen`)."""

    dtype: torch.dtype = torch.float32
    widen: bool = False

    @classmethod
    def of(cls, model: Model) -> Precision:
        """The precision of a chain whose original is ``model``: its exports keep its dtype, so a module's
        decides without reading any ONNX file."""
        if isinstance(model, nn.Module):
            dtype = module_dtype(model)
            dtype = dtype if dtype in _SHORT else torch.float32
            return cls(dtype, dtype == torch.bfloat16)
        return cls(torch.bfloat16, True) if holds_bfloat16(model) else cls()

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def named(self, candidate: str) -> str:
        return candidate.replace("fp32", _SHORT.get(self.dtype, "fp32"))

    def cpu_source(self, model: str | Path | bytes) -> str | Path | bytes:
        """``model`` as onnxruntime's CPU provider can run it: widened when it holds bfloat16 tensors."""
        return bytes(widened(model).SerializeToString()) if self.widen else model


def _last(candidates: list[Candidate]) -> str | None:
    return candidates[-1].name if candidates else None


def _add_cuda(
    candidates: list[Candidate], onnx: str | Path | bytes, providers: ProviderSelection | None, threads: int | None
) -> list[str]:
    """Append the CUDA candidate when selected and really on CUDA; the provider notes."""
    if providers is None:
        return []
    notes = list(providers.notes)
    if providers.cuda:
        cuda = ort_runner(onnx, (CUDA, CPU), "all", threads)
        if cuda.session.get_providers()[0] == CUDA:
            candidates.append(Candidate(ORT_CUDA, cuda, PROVIDER, candidates[-1].name))
        else:
            notes.append(CUDA_MISSING)
    return notes


def _reference(original: Model, lazy: bool, precision: Precision) -> tuple[Runner, str]:
    """The reference: the original in fp64, or an ONNX original run as written (no onnxruntime rewrites)."""
    build: Callable[[], Runner]
    if isinstance(original, nn.Module):
        build, name = partial(torch_runner, original, torch.float64), REFERENCE
    else:
        source = precision.cpu_source(original)
        build, name = partial(ort_runner, source, optimization="disabled"), ORIGINAL_ORT
    return (LazyRunner(build) if lazy else build()), name
