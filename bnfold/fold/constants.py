"""Constant folding: values the graph computes from stored tensors alone become stored buffers.

A FrozenBatchNorm computes ``scale = w · rsqrt(σ² + ε)`` and ``shift = b − μ · scale`` from its buffers
on every call, so the graph shows ``x · f(buffers) + g(buffers)``, not ``x · c + d``. Evaluating once
every pure call whose inputs are all ``get_attr`` constants turns that into the constant per-channel
Mul/Add the folds recognise. Random ops (dropout, rand), ops that write into their inputs and BatchNorm
calls themselves (each keeps its record) are never evaluated.
"""

from __future__ import annotations

import torch
from torch import fx

from bnfold.fold.graph import BATCHNORMS, ParameterWriter, fetch


def fold_constants(gm: fx.GraphModule) -> int:
    """Replace every evaluable call by a buffer holding its value, in place; returns how many were."""
    writer = ParameterWriter(gm)
    count = 0
    for node in list(gm.graph.nodes):
        if not evaluable(gm, node):
            continue
        value = _evaluate(gm, node)
        if not isinstance(value, torch.Tensor):
            continue
        replacement = writer.new_attribute(node, value, "constant")
        replacement.meta["val"] = node.meta.get("val")
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.recompile()
    return count


def evaluable(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A pure aten call whose inputs are all stored tensors."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return False
    if node.target in BATCHNORMS or node.target._schema.is_mutable:
        return False
    if torch.Tag.nondeterministic_seeded in node.target.tags:
        return False
    inputs = node.all_input_nodes
    return bool(inputs) and all(
        n.op == "get_attr" and isinstance(fetch(gm, str(n.target)), torch.Tensor) for n in inputs
    )


def _evaluate(gm: fx.GraphModule, node: fx.Node) -> object:
    args = fx.node.map_arg(node.args, lambda n: fetch(gm, str(n.target)))
    kwargs = fx.node.map_arg(node.kwargs, lambda n: fetch(gm, str(n.target)))
    with torch.no_grad():
        return node.target(*args, **kwargs)  # type: ignore[operator]
