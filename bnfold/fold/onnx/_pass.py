"""The ONNX fold pass: every BN-like affine ends folded, frozen as Mul/Add, or kept, with a record.

Four sweeps over the affines of the main graph, in the order of the aten-graph fold's phases:

1. in graph order, forward into the layers that compute the input (a chain Conv→BN→BN folds completely,
   since the Conv then produces the first BN's output);
2. identity branches ``Conv(x) + BN(x)`` into the Conv beside them (whose own BN folded in sweep 1);
3. in reverse order, backward into the layers that read the output (BN→BN→Conv folds completely);
4. what is left: a BatchNormalization becomes a frozen Mul/Add, a Mul/Add stays as it is; the record
   carries the reasons of the other sweeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from bnfold.fold.onnx._affine import BATCHNORM, MUL_ADD, ChannelAffine, batchnorm, mul_add
from bnfold.fold.onnx._cleanup import write_back
from bnfold.fold.onnx._evaluate import evaluate_constants
from bnfold.fold.onnx._freeze import freeze
from bnfold.fold.onnx._graph import Graph, label
from bnfold.fold.onnx._names import module_name
from bnfold.fold.onnx._shapes import check_folded, infer_types
from bnfold.fold.onnx.adapter import OnnxGraph
from bnfold.fold.reasons import explain, reason
from bnfold.fold.records import AFFINE, FOLDED, KEPT, Action, BnRecord
from bnfold.fold.rules import backward, forward, identity
from bnfold.fold.rules.graph import Plan


@dataclass
class OnnxFoldResult:
    """The folded model (a new ModelProto) and one record per BN-like node of the input."""

    model: onnx.ModelProto
    records: list[BnRecord] = field(default_factory=list)


def fold_onnx(model: onnx.ModelProto, affine_form: str = "batchnorm") -> OnnxFoldResult:
    """Fold the BatchNormalization (and per-channel Mul/Add) nodes of ``model`` into neighbouring layers.

    ``model`` is not modified. Its initializers must hold their data (a model over 2 GB loaded with
    ``onnx.load(path)`` does). Raises :class:`~bnfold.errors.FoldError` for NaN, Inf or negative running
    variance, naming the node. ``affine_form``: how a BN that cannot fold is frozen, "batchnorm" (one
    BatchNormalization computing ``x·s + t``: mean 0, variance 1, epsilon 0) or "muladd" (Mul and Add).
    """
    work = evaluate_constants(model)
    types, strict = infer_types(work)
    initializer_inputs = {t.name for t in work.graph.initializer} & {v.name for v in work.graph.input}
    graph = Graph(work.graph, types)
    records = fold_graph(graph, affine_form) + subgraph_records(work.graph)
    write_back(graph, initializer_inputs)
    from bnfold.export import tidy  # the exporters' clean-up, here for ONNX inputs

    work = tidy(work)
    check_folded(work, model, strict)
    return OnnxFoldResult(work, records)


def fold_graph(graph: Graph, affine_form: str = "batchnorm") -> list[BnRecord]:
    """Run the sweeps over ``graph``; the records come in graph order."""
    records, pending = _forward_sweep(graph)
    _sweep(graph, records, pending, _fold_identity, sorted(pending))
    _sweep(graph, records, pending, _fold_backward, sorted(pending, reverse=True))
    for index, affine in pending.items():
        records[index] = _keep(graph, affine, affine_form)
    return records


def _forward_sweep(graph: Graph) -> tuple[list[BnRecord], dict[int, ChannelAffine]]:
    """Every BN in graph order, folded forward (or removed) where it can be; the others pending, by index."""
    records: list[BnRecord] = []
    pending: dict[int, ChannelAffine] = {}
    for node in graph.nodes():
        found = _recognise(graph, node) if graph.alive(node) else None
        if isinstance(found, BnRecord):
            records.append(found)
        elif found is not None:
            folded = _removed(graph, found) or _fold_forward(graph, found)
            if folded is None:
                pending[len(records)] = found  # its record is written by the later sweeps
            records.append(folded or _record(found, KEPT))
    return records, pending


def _sweep(
    graph: Graph,
    records: list[BnRecord],
    pending: dict[int, ChannelAffine],
    rule: Callable[[Graph, ChannelAffine], BnRecord | None],
    order: list[int],
) -> None:
    """Try ``rule`` on the pending BNs in ``order``; a BN it folds leaves ``pending`` with its record."""
    for index in order:
        folded = rule(graph, pending[index])
        if folded is not None:
            records[index] = folded
            del pending[index]


def _recognise(graph: Graph, node: onnx.NodeProto) -> ChannelAffine | BnRecord | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "BatchNormalization":
        found = batchnorm(graph, node)
        if isinstance(found, str):
            return BnRecord(module_name(node), BATCHNORM, KEPT, reason=found)
        return found
    if node.op_type == "Mul":
        return mul_add(graph, node)
    return None


def _record(
    affine: ChannelAffine,
    action: Action,
    into: list[str] | None = None,
    how: str | None = None,
    reason: str | None = None,
) -> BnRecord:
    return BnRecord(affine.name, affine.kind, action, into or [], how, reason, channels=affine.channels)


def _fold_forward(graph: Graph, affine: ChannelAffine) -> BnRecord | None:
    plan = forward.match(OnnxGraph(graph), affine)
    if not isinstance(plan, Plan):
        affine.reasons.append(plan or reason("nothing_applies"))
        return None
    plan.rewrite()
    return _record(affine, FOLDED, into=plan.into, how=plan.how)


def _fold_identity(graph: Graph, affine: ChannelAffine) -> BnRecord | None:
    plan = identity.match(OnnxGraph(graph), affine)
    if isinstance(plan, str):
        affine.reasons.append(plan)
    if not isinstance(plan, Plan):
        return None
    plan.rewrite()
    return _record(affine, FOLDED, into=plan.into, how=plan.how)


def _removed(graph: Graph, affine: ChannelAffine) -> BnRecord | None:
    """A BN whose output nothing reads computes nothing the model returns: it is removed."""
    if graph.readers(affine.output) or affine.output in graph.outputs:
        return None
    _remove(graph, affine)
    return _record(affine, FOLDED, how="removed", reason=reason("unused"))


def _fold_backward(graph: Graph, affine: ChannelAffine) -> BnRecord | None:
    removed = _removed(graph, affine)
    if removed is not None:
        return removed
    plan = backward.match(OnnxGraph(graph), affine)
    if not isinstance(plan, Plan):
        affine.reasons.append(plan or reason("nothing_applies"))
        return None
    plan.rewrite()
    return _record(affine, FOLDED, into=plan.into, how=plan.how)


def _remove(graph: Graph, affine: ChannelAffine) -> None:
    for node in affine.nodes:
        graph.remove(node)


def _keep(graph: Graph, affine: ChannelAffine, affine_form: str) -> BnRecord:
    why = explain(affine.reasons)
    if affine.kind == MUL_ADD:
        return _record(affine, AFFINE, reason=why)
    problem = freeze(graph, affine, affine_form)
    if problem is not None:
        return _record(affine, KEPT, reason=f"{why}; {problem}")
    return _record(affine, AFFINE, reason=why)


def subgraph_records(graph: onnx.GraphProto, owner: onnx.NodeProto | None = None) -> list[BnRecord]:
    """Records for the BatchNormalization nodes inside subgraphs (If, Loop, ...), which are not folded."""
    records = []
    for node in graph.node:
        if owner is not None and node.op_type == "BatchNormalization":
            reason = f"it is inside a subgraph of {label(owner)}; only the main graph is folded"
            records.append(BnRecord(module_name(node), BATCHNORM, KEPT, reason=reason))
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                records += subgraph_records(sub, owner or node)
    return records
