"""Shape arithmetic folded away where shape inference knows the answer, so that a written graph holds no
``Shape → Gather → Div → Unsqueeze → Concat → Reshape`` chain its BN-free twin lacks.

The work is done by onnx_ir's and onnxscript's own passes, listed explicitly: onnx's shape inference with data
propagation (it follows ``Shape``, ``Gather``, ``Unsqueeze``, ``Concat``, ``Add``, ``Mul`` through a shape
computation), onnxscript's constant folding, and onnxscript's ``materialize_reshape_shape_rule`` (a Reshape
whose output shape is known, with at most one symbolic dimension, gets that shape as a constant, the
symbolic dimension as ``-1``). One rule is added, for what onnxscript's constant folding leaves alone: a
``Gather`` of static dimensions from a ``Shape`` with a scalar index, as the TorchScript exporter writes
``x.shape[1]``. Symbolic dimensions stay symbolic: nothing here replaces a dimension that is not known as
a number.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.optimizer._constant_folding import FoldConstantsPass
from onnxscript.rewriter import MatchResult, RewritePass, RewriteRuleClassBase
from onnxscript.rewriter.rules.common import materialize_reshape_shape_rule

from bnfold.export.passes.slices import SlicesToSplit
from bnfold.fold.onnx._evaluate import DEFAULT_OUTPUT_LIMIT, small_fill

ROUNDS = 8
"""Rounds of inference, folding and rewriting at most: a chain of channel shuffles needs about one per block
(each Reshape made constant lets inference see the next one's input), and the rounds stop when one changes
nothing."""
SPLIT_INPUT_OPSET = 13  # Split's sizes as an input
RESHAPE_ALLOWZERO_OPSET = 14  # materialize_reshape_shape_rule writes Reshape(allowzero=1)


class FoldShapeArithmetic(ir.passes.InPlacePass):
    """Constant folding (as :func:`bnfold.export.tidy` folds) with whole-graph shape inference, the shape
    rules and :class:`SlicesToSplit`, in rounds until nothing changes. The shapes of intermediate values an
    exporter declared are dropped first and inferred again from the graph's inputs, so a stale declaration
    (a traced example's batch size) never becomes a constant."""

    def __init__(self, rounds: int = ROUNDS) -> None:
        super().__init__()
        self.rounds = rounds

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        _forget_intermediate_shapes(model.graph)
        rules = [static_shape_gather_rule]
        opset = model.opset_imports.get("", 0)
        if opset >= RESHAPE_ALLOWZERO_OPSET:
            rules.append(materialize_reshape_shape_rule)
        rounds = ir.passes.PassManager(
            [
                common.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True),
                FoldConstantsPass(
                    shape_inference=True,
                    input_size_limit=8192,
                    output_size_limit=DEFAULT_OUTPUT_LIMIT,
                    should_fold=small_fill,
                ),
                RewritePass(rules),
                *([SlicesToSplit()] if opset >= SPLIT_INPUT_OPSET else []),
                common.RemoveUnusedNodesPass(),
            ],
            steps=self.rounds,
            early_stop=True,
        )
        return ir.passes.PassResult(model, rounds(model).modified)


def _forget_intermediate_shapes(graph: ir.Graph) -> None:
    declared = {*graph.inputs, *graph.outputs, *graph.initializers.values()}
    for node in graph:
        for value in node.outputs:
            if value not in declared:
                value.shape = None


class StaticShapeGather(RewriteRuleClassBase):
    """``Gather(Shape(x), i)`` → the constant ``x.shape[i]`` when those dimensions are numbers (``i`` a
    constant scalar or 1-D index; ``Shape``'s ``start`` and ``end`` honoured)."""

    def pattern(self, op: Any, shape: ir.Value, indices: ir.Value) -> Any:
        return op.Gather(shape, indices, _allow_other_attributes=True)

    def check(self, context: Any, shape: ir.Value, indices: ir.Value) -> MatchResult:
        result = MatchResult()
        if context.root.attributes.get_int("axis", 0) != 0:
            return result.fail("Gather is not along axis 0")
        dims = _shape_slice(shape)
        if dims is None:
            return result.fail("the gathered tensor is not the shape of a value of known rank")
        if indices.const_value is None:
            return result.fail("the indices are not a constant")
        index = indices.const_value.numpy()
        if index.ndim > 1 or not np.issubdtype(index.dtype, np.integer):
            return result.fail("the indices are not a scalar or 1-D integer constant")
        picked = [dims[int(i)] if -len(dims) <= int(i) < len(dims) else None for i in index.reshape(-1)]
        if not all(isinstance(d, int) for d in picked):
            return result.fail("a gathered dimension is not a known number")
        self._value = np.array(picked, dtype=np.int64).reshape(index.shape)
        return result

    def rewrite(self, op: Any, shape: ir.Value, indices: ir.Value) -> Any:
        return op.Constant(value=ir.tensor(self._value))


def _shape_slice(value: ir.Value) -> list[int | ir.SymbolicDim] | None:
    """The dimensions a ``Shape`` node returns (its ``start``/``end`` applied), or None."""
    node = value.producer()
    if node is None or node.op_type != "Shape" or node.domain not in ("", "ai.onnx") or not node.inputs:
        return None
    source = node.inputs[0]
    if source is None or source.shape is None:
        return None
    start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", None)
    return list(source.shape[start:end])


static_shape_gather_rule = StaticShapeGather.rule()  # type: ignore[no-untyped-call]
