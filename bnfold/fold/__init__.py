"""Folding: every BatchNorm ends folded into a neighbouring layer, as a frozen affine, or kept with a reason.

The public face is :func:`fold`. The algebra lives in :mod:`bnfold.fold.maths`, the fold rules shared with
ONNX inputs in :mod:`bnfold.fold.rules` (run on torch FX graphs through :mod:`bnfold.fold.fx_graph`), their
schedule in :mod:`bnfold.fold.sweeps`, and the pass over a GraphModule in :mod:`bnfold.fold.engine`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from bnfold._entry import make_callable
from bnfold.errors import InputSpecError
from bnfold.fold.capture import capture, graph_module, plain_module
from bnfold.fold.constants import fold_constants
from bnfold.fold.eager import unboxed_calls
from bnfold.fold.engine import fold_graph
from bnfold.fold.graph import drop_inference_dropouts
from bnfold.fold.inplace import functionalise_arithmetic
from bnfold.fold.recalibrate import recalibrate
from bnfold.fold.records import BnRecord, summarise
from bnfold.fold.sites import find_sites

__all__ = ["BnRecord", "FoldResult", "fold", "fold_graph"]


@dataclass
class FoldResult:
    """The folded model (a runnable ``nn.Module``), one record per BatchNorm, and notes on what changed."""

    module: fx.GraphModule
    records: list[BnRecord]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    program: torch.export.ExportedProgram | None = None
    recalibrated: bool = False
    reference: fx.GraphModule | None = None
    """With calibration: the unfolded model with the re-estimated statistics, what ``module`` must match."""

    @property
    def counts(self) -> dict[str, int]:
        return summarise(self.records)

    def __repr__(self) -> str:
        c = self.counts
        return f"FoldResult({c['folded']}/{c['found']} BatchNorms folded, {c['affine']} frozen affine)"


def fold(
    model: nn.Module | torch.export.ExportedProgram,
    example_inputs: Sequence[Any] | None = None,
    *,
    calibration: Iterable[Sequence[torch.Tensor] | torch.Tensor] | None = None,
    dynamic_batch: bool = True,
    dynamic_axes: Sequence[Sequence[int]] | None = None,
    affine_form: str = "batchnorm",
) -> FoldResult:
    """Fold every BatchNorm of ``model`` that folds exactly; the input model is not modified.

    ``model`` is an ``nn.Module`` (traced with ``example_inputs``) or an ``ExportedProgram``.
    ``calibration``: batches (each a sequence of the model's inputs) to re-estimate every BN's running
    statistics from before folding, as ``torch.optim.swa_utils.update_bn`` does (see
    :func:`bnfold.fold.recalibrate.recalibrate`); each record then carries ``max_stat_change``.
    ``dynamic_batch`` keeps the batch dimension symbolic when tracing a module; ``dynamic_axes`` (one
    sequence of axes per input) names the symbolic axes instead.
    ``affine_form``: how a BN that cannot fold is frozen, "batchnorm" or "muladd" (see
    :func:`bnfold.fold.engine.fold_graph`).
    """
    start = time.perf_counter()
    program, notes = _program(model, example_inputs, dynamic_batch, dynamic_axes)
    gm = graph_module(program)
    drop_inference_dropouts(gm)
    functionalise_arithmetic(gm)
    folded_constants = fold_constants(gm)
    if folded_constants:
        notes.append(f"evaluated {folded_constants} computation(s) on stored tensors once, as constants")
    sites = find_sites(gm, check_statistics=calibration is None)
    recalibrated = None
    if calibration is not None:
        notes.append(recalibrate(gm, sites, calibration))
        recalibrated = copy.deepcopy(gm)
    records = fold_graph(gm, sites, affine_form)
    unboxed_calls(gm.graph)
    gm = plain_module(gm)  # recompiles
    return FoldResult(gm, records, notes, time.perf_counter() - start, program, calibration is not None, recalibrated)


def _program(
    model: nn.Module | torch.export.ExportedProgram,
    example_inputs: Sequence[Any] | None,
    dynamic_batch: bool,
    dynamic_axes: Sequence[Sequence[int]] | None,
) -> tuple[torch.export.ExportedProgram, list[str]]:
    """The program to fold: ``model`` itself, or a module traced with its example inputs, and the notes."""
    if isinstance(model, torch.export.ExportedProgram):
        return model, []
    if example_inputs is None:
        raise InputSpecError("fold() needs example_inputs to trace an nn.Module")
    axes = None if dynamic_axes is None else tuple(tuple(a) for a in dynamic_axes)
    return capture(model, tuple(example_inputs), dynamic_batch, axes)


make_callable(__name__, fold)  # bnfold.fold(model, inputs) calls fold(); bnfold.fold.maths stays reachable
