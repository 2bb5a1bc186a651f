"""The fold pass over a GraphModule: every affine site ends folded, as a frozen affine, or kept.

The sweeps of :mod:`bnfold.fold.sweeps` run over the sites through :class:`~bnfold.fold.fx_graph.FxGraph`;
each site's record takes their outcome.
"""

from __future__ import annotations

from torch import fx

from bnfold.fold.fx_graph import FxAffine, FxGraph
from bnfold.fold.graph import remove_unused
from bnfold.fold.records import BnRecord
from bnfold.fold.sites import AffineSite, find_sites
from bnfold.fold.sweeps import AFFINE_FORMS, fold_affines

__all__ = ["AFFINE_FORMS", "fold_graph"]


def fold_graph(
    gm: fx.GraphModule, sites: list[AffineSite] | None = None, affine_form: str = "batchnorm"
) -> list[BnRecord]:
    """Fold every site of ``gm`` in place and return one record per site.

    ``affine_form``: how a BN that cannot fold is frozen: "batchnorm", an inference BatchNorm computing
    ``x·s + t`` (running mean 0, variance 1, eps 0; ONNX Runtime's per-channel kernel, the fastest form
    measured), or "muladd", a Mul and an Add (no BatchNormalization node left at all).
    """
    sites = find_sites(gm) if sites is None else sites
    foldable = [site for site in sites if site.foldable]
    outcomes = fold_affines(FxGraph(gm), [FxAffine(site, site.axis) for site in foldable], affine_form)
    for site, outcome in zip(foldable, outcomes, strict=True):
        record = site.record
        record.action, record.how, record.into, record.reason = (
            outcome.action,
            outcome.how,
            outcome.into,
            outcome.reason,
        )
    remove_unused(gm)
    return [s.record for s in sites]
