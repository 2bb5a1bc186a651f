"""Constant folding: values the graph computes from stored tensors alone become stored buffers.

A FrozenBatchNorm computes ``scale = w · rsqrt(σ² + ε)`` and ``shift = b − μ · scale`` from its buffers
on every call, so the graph shows ``x · f(buffers) + g(buffers)``, not ``x · c + d``. Evaluating once
every pure call whose inputs are all ``get_attr`` constants turns that into the constant per-channel
Mul/Add the folds recognise; so is a weight computed from parameters (weight normalisation, a pruning mask,
a standardised weight: ``var_mean``, whose results are read through ``getitem``, or timm's ``StdConv2d``,
which standardises its weight with ``F.batch_norm(weight, None, None, training=True)``: a BatchNorm call on
a stored tensor computes a constant, it normalises no batch of the model). Random ops (dropout, rand) and
ops that write into their inputs (a BatchNorm updating running statistics in training mode) are never
evaluated.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from bnfold.fold.graph import BATCHNORMS, ParameterWriter, arguments, fetch


def fold_constants(gm: fx.GraphModule) -> int:
    """Replace every evaluable call by a buffer holding its value, in place; returns how many were."""
    writer = ParameterWriter(gm)
    count = 0
    for node in list(gm.graph.nodes):
        if not evaluable(gm, node):
            continue
        value = _evaluate(gm, node)
        if isinstance(value, torch.Tensor):
            _replace(writer, node, value)
            count += 1
        elif isinstance(value, (tuple, list)) and _read_by_index(node):
            for user in list(node.users):
                _replace(writer, user, value[int(user.args[1])])
            gm.graph.erase_node(node)
            count += 1
    if count:
        gm.recompile()
    return count


def _replace(writer: ParameterWriter, node: fx.Node, value: torch.Tensor) -> None:
    replacement = writer.new_attribute(node, value, "constant")
    replacement.meta["val"] = node.meta.get("val")
    node.replace_all_uses_with(replacement)
    node.graph.erase_node(node)


def _read_by_index(node: fx.Node) -> bool:
    """Whether every reader of ``node``'s (tuple) result takes one of its tensors by index."""
    return bool(node.users) and all(
        user.op == "call_function" and user.target is operator.getitem and isinstance(user.args[1], int)
        for user in node.users
    )


def evaluable(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A pure aten call whose inputs are all stored tensors."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return False
    if node.target._schema.is_mutable or (node.target in BATCHNORMS and _updates_statistics(node)):
        return False
    if torch.Tag.nondeterministic_seeded in node.target.tags:
        return False
    inputs = node.all_input_nodes
    return bool(inputs) and all(
        n.op == "get_attr" and isinstance(fetch(gm, str(n.target)), torch.Tensor) for n in inputs
    )


def _updates_statistics(node: fx.Node) -> bool:
    """A BatchNorm call in training mode with running statistics: it writes into them."""
    args = arguments(node)
    return bool(args.get("training")) and args.get("running_mean") is not None


def _evaluate(gm: fx.GraphModule, node: fx.Node) -> object:
    args = fx.node.map_arg(node.args, lambda n: fetch(gm, str(n.target)))
    kwargs = fx.node.map_arg(node.kwargs, lambda n: fetch(gm, str(n.target)))
    with torch.no_grad():
        return node.target(*args, **kwargs)  # type: ignore[operator]
