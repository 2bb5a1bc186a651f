"""The fold pass over a GraphModule: every affine site ends folded, as a frozen affine, or kept.

Rules are tried in phases so that one fold can enable the next: first into producers (plain, branch sums,
concatenations), then RepVGG identity branches (whose neighbouring conv's own BN is folded by then), then
into consumers. Whatever is left becomes a frozen ``x·s + t`` with the reasons every rule gave.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx

from bnfold.fold.fx_graph import FxAffine, FxGraph
from bnfold.fold.graph import ParameterWriter, aten, ndim, readers, remove_unused
from bnfold.fold.reasons import explain, reason
from bnfold.fold.records import AFFINE, FOLDED, BnRecord
from bnfold.fold.rules import backward, forward, identity
from bnfold.fold.rules.graph import Match, Plan
from bnfold.fold.sites import AffineSite, find_sites

Rule = Callable[[AffineSite, FxGraph], Match]


def _forward(site: AffineSite, fxg: FxGraph) -> Match:
    return forward.match(fxg, FxAffine(site))


def _identity(site: AffineSite, fxg: FxGraph) -> Match:
    return identity.match(fxg, FxAffine(site))


def _backward(site: AffineSite, fxg: FxGraph) -> Match:
    return backward.match(fxg, FxAffine(site))


PHASES: tuple[tuple[Rule, ...], ...] = (
    (_forward,),
    (_identity,),
    (_backward,),
)


AFFINE_FORMS = ("batchnorm", "muladd")


def fold_graph(
    gm: fx.GraphModule, sites: list[AffineSite] | None = None, affine_form: str = "batchnorm"
) -> list[BnRecord]:
    """Fold every site of ``gm`` in place and return one record per site.

    ``affine_form``: how a BN that cannot fold is frozen: "batchnorm", an inference BatchNorm computing
    ``x·s + t`` (running mean 0, variance 1, eps 0; ONNX Runtime's per-channel kernel, the fastest form
    measured), or "muladd", a Mul and an Add (no BatchNormalization node left at all).
    """
    if affine_form not in AFFINE_FORMS:
        raise ValueError(f"affine_form must be one of {AFFINE_FORMS}, not {affine_form!r}")
    sites = find_sites(gm) if sites is None else sites
    fxg = FxGraph(gm)
    writer = fxg.writer
    reasons: dict[int, list[str]] = {id(s): [] for s in sites}
    pending = [s for s in sites if s.foldable and not _remove_if_unread(s, gm.graph)]
    for rules in PHASES:
        pending = [s for s in pending if not _try(s, rules, fxg, reasons[id(s)])]
    for site in pending:
        _freeze(site, gm, writer, reasons[id(site)], affine_form)
    remove_unused(gm)
    return [s.record for s in sites if _recorded(s)]


def _remove_if_unread(site: AffineSite, graph: fx.Graph) -> bool:
    """A BN whose output nothing reads computes nothing the model returns: it is removed."""
    if readers(site.output):
        return False
    site.erase(graph)
    site.record.action, site.record.how, site.record.reason = FOLDED, "removed", reason("unused")
    return True


def _recorded(site: AffineSite) -> bool:
    """A plain Mul/Add after a layer is only reported when it folded; anything from a BN always is."""
    return site.is_batchnorm_call or site.record.kind != "Mul/Add" or site.record.action == FOLDED


def _try(site: AffineSite, rules: tuple[Rule, ...], fxg: FxGraph, reasons: list[str]) -> bool:
    for rule in rules:
        match = rule(site, fxg)
        if isinstance(match, Plan):
            match.rewrite()
            site.record.action, site.record.into, site.record.how = FOLDED, match.into, match.how
            site.record.reason = None
            return True
        if isinstance(match, str):
            reasons.append(match)
            if rule is not rules[-1]:
                return False  # the pattern applied and refused: a later rule of this phase would mislead
    return False


def _freeze(
    site: AffineSite, gm: fx.GraphModule, writer: ParameterWriter, reasons: list[str], form: str = "batchnorm"
) -> None:
    """Keep the site as a frozen per-channel ``x·s + t`` (already one when it is a Mul/Add)."""
    site.record.action = AFFINE
    site.record.reason = explain(reasons)
    if not site.is_batchnorm_call:
        return
    x = site.input
    dtype = x.meta["val"].dtype if "val" in x.meta else torch.float32
    scale, shift = site.scale.to(dtype), site.shift.to(dtype)  # type: ignore[union-attr]
    if form == "batchnorm":
        frozen = _frozen_batchnorm(gm, writer, site, scale, shift)
    else:
        frozen = _frozen_muladd(gm, writer, site, scale, shift)
    frozen.meta["val"] = site.output.meta.get("val", x.meta.get("val"))
    frozen.meta["nn_module_stack"] = site.output.meta.get("nn_module_stack", {})
    site.output.replace_all_uses_with(frozen)
    site.erase(gm.graph)


def _frozen_batchnorm(
    gm: fx.GraphModule, writer: ParameterWriter, site: AffineSite, scale: torch.Tensor, shift: torch.Tensor
) -> fx.Node:
    """``batch_norm(x, s, t, mean=0, var=1, eps=0)``: exactly ``x·s + t``, as one inference BatchNorm."""
    args = [
        writer.new_attribute(site.output, value, name)
        for value, name in (
            (scale, "scale"),
            (shift, "shift"),
            (torch.zeros_like(scale), "mean"),
            (torch.ones_like(scale), "var"),
        )
    ]
    with gm.graph.inserting_before(site.output):
        return gm.graph.call_function(aten.batch_norm.default, (site.input, *args, False, 0.0, 0.0, False))


def _frozen_muladd(
    gm: fx.GraphModule, writer: ParameterWriter, site: AffineSite, scale: torch.Tensor, shift: torch.Tensor
) -> fx.Node:
    """``x·s + t`` as a Mul and an Add, the constants shaped to broadcast over axis 1."""
    view = [-1] + [1] * ((ndim(site.input) or 2) - 2)
    s_node = writer.new_attribute(site.output, scale.reshape(view), "scale")
    t_node = writer.new_attribute(site.output, shift.reshape(view), "shift")
    with gm.graph.inserting_before(site.output):
        scaled = gm.graph.call_function(aten.mul.Tensor, (site.input, s_node))
        scaled.meta["val"] = site.input.meta.get("val")
        return gm.graph.call_function(aten.add.Tensor, (scaled, t_node))
