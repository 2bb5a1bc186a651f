"""The ONNX fold pass: every BN-like affine ends folded, frozen, or kept, with a record.

The BatchNormalization nodes and per-channel Mul/Add pairs of the main graph are recognised as affines
(:mod:`._affine`) as the sweeps of :mod:`bnfold.fold.sweeps` reach them, and folded through
:class:`~bnfold.fold.onnx.adapter.OnnxGraph`; a BN inside a subgraph (If, Loop, ...) is recorded and kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import onnx

from bnfold.fold.onnx._affine import BATCHNORM, MUL_ADD, ChannelAffine, batchnorm, mul_add
from bnfold.fold.onnx._cleanup import write_back
from bnfold.fold.onnx._evaluate import evaluate_constants
from bnfold.fold.onnx._graph import Graph, label
from bnfold.fold.onnx._names import module_name
from bnfold.fold.onnx._shapes import check_folded, infer_types
from bnfold.fold.onnx.adapter import OnnxGraph
from bnfold.fold.records import KEPT, BnRecord, Op
from bnfold.fold.sweeps import Outcome, fold_affines


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
    """Run the sweeps of :mod:`bnfold.fold.sweeps` over ``graph``; the records come in graph order."""
    found: list[ChannelAffine | BnRecord] = []

    def affines() -> Iterator[ChannelAffine]:
        """Each BN-like node in graph order, recognised when the sweep reaches it (after the folds before it)."""
        for node in graph.nodes():
            recognised = _recognise(graph, node) if graph.alive(node) else None
            if recognised is not None:
                found.append(recognised)
            if isinstance(recognised, ChannelAffine):
                yield recognised

    outcomes = iter(fold_affines(OnnxGraph(graph), affines(), affine_form))
    return [entry if isinstance(entry, BnRecord) else _record(entry, next(outcomes)) for entry in found]


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


def _record(affine: ChannelAffine, outcome: Outcome) -> BnRecord:
    op: Op = "muladd" if affine.kind == MUL_ADD else "batchnorm"
    return BnRecord(
        affine.name,
        affine.kind,
        outcome.action,
        outcome.into,
        outcome.how,
        outcome.reason,
        channels=affine.channels,
        op=op,
    )


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
