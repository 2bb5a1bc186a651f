"""Constant subgraphs evaluated before folding, by onnxscript's constant folder (an onnx_ir pass).

Exporters compute many parameters in the graph rather than storing them: the dynamo exporter (with
``optimize=False``) gives a bias-free Conv a bias ``Expand(CastLike(0), Shape(W)[0])``, the TorchScript
exporter without constant folding writes ``MatMul(x, Transpose(W))`` for a bias-free Linear and a frozen
BatchNorm's ``w * (rv + eps).rsqrt()``. Evaluated once, they become initializers, and a fold treats them as
the constants they are. Each is computed as ONNX defines the op, in the tensor's own type, as a runtime would
compute it on every call.

onnxscript leaves every ``ConstantOfShape`` alone (a constant fill can be huge); a small one is evaluated
too, since the TorchScript exporter builds a reflect Pad's amounts with one. It also leaves an op with
several outputs alone: a BatchNormalization of constants (timm's ``StdConv2d`` standardises its weight with
one, in training mode) is evaluated here, in float64, and cast back.

Never evaluated: anything that reads a graph input, including an initializer that is also a graph input (a
caller may feed it), control-flow and non-deterministic ops. Nothing else is removed here but Identity nodes
(a Dropout at inference becomes one), which would stand between a BN and the layer it folds into (not in a
graph with subgraphs, whose values onnx_ir would rename): the nodes left without readers are dropped when the
folded graph is written back, after a BatchNorm nothing reads was recorded.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.convenience
import onnx_ir.passes.common as common
from onnxscript import optimizer

DEFAULT_OUTPUT_LIMIT = 512 * 512  # onnxscript's own default for the largest value it stores
SMALL_FILL = 1024  # a ConstantOfShape of up to this many elements is evaluated


def evaluate_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose constant subgraphs are initializers.

    No evaluated value is larger than the model's largest initializer (or onnxscript's default limit), so a
    shape computation cannot blow up into a huge stored tensor.
    """
    largest = max((_elements(t) for t in model.graph.initializer), default=0)
    work = ir.serde.deserialize_model(model)
    limit = max(largest, DEFAULT_OUTPUT_LIMIT)

    def fold() -> None:
        optimizer.fold_constants(
            work,
            onnx_shape_inference=False,
            input_size_limit=sys.maxsize,
            output_size_limit=limit,
            should_fold=small_fill,
        )

    fold()
    if evaluate_batchnorms(work.graph):
        fold()  # what reads the standardised weight (a Reshape back to its shape)
    from bnfold.export.cleanup import has_subgraphs

    if not has_subgraphs(model):
        common.IdentityEliminationPass()(work)
    return ir.serde.serialize_model(work)


def evaluate_batchnorms(graph: ir.Graph) -> int:
    """Evaluate each BatchNormalization of constants whose extra outputs nothing reads (onnxscript leaves an op
    with several outputs alone): timm's ``StdConv2d`` standardises its weight with a BatchNorm in training
    mode, a constant, not a BatchNorm of the model. Returns how many."""
    count = 0
    for node in list(graph):
        value = _batchnorm_value(node)
        if value is None:
            continue
        out = node.outputs[0]
        constant = ir.Value(name=f"{out.name}_evaluated", const_value=ir.tensor(value))
        graph.register_initializer(constant)
        onnx_ir.convenience.replace_all_uses_with(out, constant)
        graph.remove(node, safe=True)
        count += 1
    return count


def _batchnorm_value(node: ir.Node) -> np.ndarray | None:
    """The output of a BatchNormalization of constants, computed in float64 as ONNX defines it (training
    mode: the statistics of the input over every axis but 1, the biased variance) and cast back; None for any
    other node, or one whose running statistics outputs are read."""
    if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 5:
        return None
    tensors = [None if v is None else v.const_value for v in node.inputs[:5]]
    if any(t is None for t in tensors) or any(o.uses() for o in node.outputs[1:]):
        return None
    x, scale, bias, mean, var = (np.asarray(t.numpy(), np.float64) for t in tensors)  # type: ignore[union-attr]
    attrs = node.attributes
    epsilon = attrs["epsilon"].as_float() if "epsilon" in attrs else 1e-5
    if "training_mode" in attrs and attrs["training_mode"].as_int():
        axes = tuple(a for a in range(x.ndim) if a != 1)
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    shape = [1, -1] + [1] * (x.ndim - 2)
    scale = scale.reshape(shape) / np.sqrt(var.reshape(shape) + epsilon)
    y = (x - mean.reshape(shape)) * scale + bias.reshape(shape)
    return y.astype(tensors[0].numpy().dtype)  # type: ignore[union-attr]


def small_fill(node: ir.Node) -> bool | None:
    """True for a ``ConstantOfShape`` of a known, small shape; None (onnxscript decides) for other nodes."""
    if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx") or not node.inputs:
        return None
    shape = node.inputs[0].const_value if node.inputs[0] is not None else None
    if shape is None:
        return None
    return bool(int(np.prod(shape.numpy(), dtype=np.int64)) <= SMALL_FILL)


def _elements(tensor: onnx.TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count
