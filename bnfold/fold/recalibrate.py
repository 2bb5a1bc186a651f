"""Re-estimating BatchNorm running statistics from calibration batches, as ``swa_utils.update_bn`` does.

Every BatchNorm with running statistics starts over and, in one pass over the N batches, normalises each
batch with that batch's own statistics (as in train mode) while accumulating a cumulative average
(``momentum=None``):

    running_mean = (1/N) Σ_n mean_n(x)        running_var = (1/N) Σ_n var_n(x)   (unbiased variance)

A BatchNorm called more than once per batch averages over all its calls, as ``update_bn`` does. Unlike
``update_bn``, everything else runs as at inference (dropout stays off), a functional ``batch_norm`` on
running-statistics buffers is re-estimated too, and a BatchNorm the batches never reach keeps its
statistics instead of being reset to mean 0, variance 1. The pass runs on the GraphModule
with an ``fx.Interpreter``; the new statistics are new tensors set on it, so the caller's model and
ExportedProgram keep theirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx
from torch.utils import _pytree as pytree

from bnfold.errors import InputSpecError, one_line
from bnfold.fold.graph import arguments, aten, fetch, set_tensor
from bnfold.fold.sites import AffineSite, refresh_affine

F64 = torch.float64


@dataclass
class _Sums:
    """Running sums of one BatchNorm's per-batch means and unbiased variances, in float64."""

    mean: torch.Tensor
    var: torch.Tensor
    count: int = 0

    def add(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        self.mean, self.var, self.count = self.mean + mean, self.var + var, self.count + 1


class _CalibrationPass(fx.Interpreter):
    """Runs the graph with every BatchNorm of ``sites`` in train-mode normalisation, summing statistics."""

    def __init__(self, gm: fx.GraphModule, sites: list[AffineSite]) -> None:
        super().__init__(gm)
        self.extra_traceback = False  # errors reach the user as one line (see _run)
        self.sites = {site.first: site for site in sites if site.statistics is not None}
        self.sums: dict[tuple[str, str], _Sums] = {}

    def run_node(self, n: fx.Node) -> object:
        site = self.sites.get(n)
        if site is None:
            return super().run_node(n)
        values = {k: self.env[v] if isinstance(v, fx.Node) else v for k, v in arguments(n).items()}
        out = self._normalise(site, values)
        if n.target == aten._native_batch_norm_legit_no_training.default:
            return out, torch.empty(0), torch.empty(0)  # only output 0 is read (see sites.batchnorm_site)
        return out

    def _normalise(self, site: AffineSite, values: dict[str, object]) -> torch.Tensor:
        x: torch.Tensor = values["input"]  # type: ignore[assignment]
        if x.numel() // max(x.shape[1], 1) < 2:
            raise InputSpecError(
                f"calibration: BatchNorm {site.record.name} sees one value per channel in a "
                "batch, which has no variance; use batches of at least 2 samples"
            )
        dims = [d for d in range(x.dim()) if d != 1]
        x64 = x.detach().to(F64)
        mean, var = x64.mean(dims), x64.var(dims, correction=1)
        key: tuple[str, str] = site.statistics  # type: ignore[assignment]
        self.sums.setdefault(key, _Sums(torch.zeros_like(mean), torch.zeros_like(var))).add(mean, var)
        weight: torch.Tensor | None = values["weight"]  # type: ignore[assignment]
        bias: torch.Tensor | None = values["bias"]  # type: ignore[assignment]
        eps = float(values["eps"])  # type: ignore[arg-type]
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)


def recalibrate(
    gm: fx.GraphModule, sites: list[AffineSite], batches: Iterable[Sequence[torch.Tensor] | torch.Tensor]
) -> str:
    """Re-estimate the running statistics of every BatchNorm site from ``batches`` (each a sequence of the
    model's inputs, or one tensor); update the sites' scale, shift and ``record.max_stat_change``.
    Returns a note for the report."""
    calibration = _CalibrationPass(gm, sites)
    count = 0
    for batch in batches:
        _run(calibration, batch, count)
        count += 1
    if count == 0:
        raise InputSpecError("the calibration data holds no batches")
    changes = {key: _store(gm, key, sums) for key, sums in calibration.sums.items()}
    for site in sites:
        if site.statistics is not None:
            refresh_affine(gm, site)
            site.record.max_stat_change = changes.get(site.statistics)
    return _note(sites, changes, count)


def _run(calibration: _CalibrationPass, batch: Sequence[torch.Tensor] | torch.Tensor, index: int) -> None:
    inputs = (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)
    try:
        with torch.no_grad():
            calibration.run(*pytree.tree_leaves(inputs))
    except (RuntimeError, AssertionError, ValueError, TypeError, IndexError) as exc:
        raise InputSpecError(f"calibration batch {index} does not fit the model: {one_line(exc)}") from exc


def _store(gm: fx.GraphModule, key: tuple[str, str], sums: _Sums) -> float:
    """Set the averaged statistics on ``gm``; returns :func:`statistics_change` of old to new."""
    old = [fetch(gm, target) for target in key]
    new = [(total / sums.count).to(o.dtype) for total, o in zip((sums.mean, sums.var), old, strict=True)]
    for target, value in zip(key, new, strict=True):
        set_tensor(gm, target, value)
    return statistics_change(old[0], old[1], new[0], new[1])


def statistics_change(
    old_mean: torch.Tensor, old_var: torch.Tensor, new_mean: torch.Tensor, new_var: torch.Tensor, eps: float = 1e-5
) -> float:
    """How far the old statistics were from the new, as the largest relative change over channels.

    The mean's change is measured in old standard deviations, ``|μ' − μ| / √(σ² + ε)``, the variance's
    relative to the old variance, ``|σ'² − σ²| / (σ² + ε)``: both are 0 for unchanged statistics and
    stay meaningful where the old mean was 0.
    """
    mean0, var0 = old_mean.detach().to(F64), old_var.detach().to(F64)
    mean1, var1 = new_mean.detach().to(F64), new_var.detach().to(F64)
    shift = (mean1 - mean0).abs() / torch.sqrt(var0.clamp_min(0) + eps)
    spread = (var1 - var0).abs() / (var0.clamp_min(0) + eps)
    return float(torch.nan_to_num(torch.maximum(shift, spread), nan=float("inf")).max())


def _note(sites: list[AffineSite], changes: dict[tuple[str, str], float], batches: int) -> str:
    with_stats = [s for s in sites if s.statistics is not None]
    note = f"re-estimated the statistics of {len(changes)} BatchNorm(s) from {batches} calibration batch(es)"
    missed = [s.record.name for s in with_stats if s.statistics not in changes]
    if missed:
        note += f"; {', '.join(missed)} never ran on them and kept their statistics"
    if changes:
        largest = max(with_stats, key=lambda s: s.record.max_stat_change or 0.0)
        note += f"; largest relative change {largest.record.max_stat_change:.3g} in {largest.record.name}"
    return note
