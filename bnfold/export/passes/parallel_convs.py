"""One Conv per reparameterisable block: parallel Conv branches summed by Adds become one Conv.

After folding, a RepVGG block is ``Conv3x3(x) + Conv1x1(x)`` (its identity branch already inside the 3x3),
a MobileOne block k over-parameterised 3x3 branches and a 1x1 branch summed, an ACNet block a 3x3, a 1x3
and a 3x1. Their authors reparameterise each block into one convolution; this pass does the same on the
written graph, exactly (the maths is in :mod:`bnfold.export.passes.conv_kernels`).

A sum is a tree of ``Add`` nodes whose inner values have no other reader and are not graph outputs; its
leaves are summed. Convolution leaves merge when each one's output is read by the sum only, they read the
same input with the same strides, dilations, groups and channels, their weights (and biases) are
initializers a caller cannot feed (not graph inputs), and their pads line up. The merged sum keeps its
other leaves; a sum left with one leaf is that leaf. What was merged is written into the model's
metadata (``bnfold.merged_convs``, a JSON list) and read into the report's ``onnx.merged_convs``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import onnx
import onnx_ir as ir

from bnfold.export.passes.conv_kernels import ConvShape, Placement, explicit_pads, merged_kernel, placement, summed_bias

METADATA_KEY = "bnfold.merged_convs"
_FLOATS = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}


@dataclass
class Branch:
    """A Conv leaf of a sum that may merge: the node and its geometry with explicit pads."""

    node: ir.Node
    shape: ConvShape
    key: tuple[Any, ...]  # what must be equal for two branches to merge


class MergeParallelConvs(ir.passes.InPlacePass):
    """Merge the parallel Conv branches of every sum of the main graph into one Conv."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        merged: list[dict[str, Any]] = []
        for root in [node for node in model.graph if _is_add(node) and not _inner(node.outputs[0])]:
            merged += _merge_sum(model.graph, root)
        if merged:
            earlier = json.loads(model.metadata_props.get(METADATA_KEY, "[]"))
            model.metadata_props[METADATA_KEY] = json.dumps(earlier + merged)
        return ir.passes.PassResult(model, bool(merged))


def merged_convs(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """What :class:`MergeParallelConvs` merged in ``model``: per merged Conv, its ``node`` name, the
    ``convs`` it replaced (module paths where the exporter kept them, else node names) and its
    ``kernel_shape``."""
    text = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), "[]")
    found: list[dict[str, Any]] = json.loads(text)
    return found


def _is_add(node: ir.Node) -> bool:
    return node.op_type == "Add" and node.domain in ("", "ai.onnx") and len(node.inputs) == 2


def _exclusive(value: ir.Value) -> ir.Node | None:
    """The one node that reads ``value``, when nothing else does and it is not a graph output."""
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    reader: ir.Node = uses[0].node
    return reader


def _inner(value: ir.Value) -> bool:
    """Whether ``value`` is an inner value of a larger sum: read by one Add only."""
    reader = _exclusive(value)
    return reader is not None and _is_add(reader)


def _tree(root: ir.Node) -> tuple[list[ir.Node], list[ir.Value]]:
    """The Adds of the sum rooted at ``root`` and its leaves, in order."""
    adds, leaves = [root], []
    for value in root.inputs:
        producer = value.producer() if value is not None else None
        if value is not None and producer is not None and _is_add(producer) and _inner(value):
            more_adds, more_leaves = _tree(producer)
            adds += more_adds
            leaves += more_leaves
        elif value is not None:
            leaves.append(value)
    return adds, leaves


def _merge_sum(graph: ir.Graph, root: ir.Node) -> list[dict[str, Any]]:
    adds, leaves = _tree(root)
    branches = [b for b in (_branch(leaf) for leaf in leaves) if b is not None]
    clusters = [c for c in _clusters(branches) if len(c[0]) > 1]
    if not clusters:
        return []
    merged_leaves, records = [], []
    for members, where in clusters:
        conv = _merged_conv(graph, members, where, root)
        merged_leaves.append(conv.outputs[0])
        records.append(_record(conv, members, where))
    gone = {m.node.outputs[0] for members, _ in clusters for m in members}
    _resum(graph, root, [*merged_leaves, *(v for v in leaves if v not in gone)])
    graph.remove([*adds, *(m.node for members, _ in clusters for m in members)], safe=True)
    return records


def _branch(leaf: ir.Value) -> Branch | None:
    """The Conv computing ``leaf`` as a mergeable branch, or None."""
    node = leaf.producer()
    if node is None or node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
        return None
    if _exclusive(leaf) is None or not 2 <= len(node.inputs) <= 3 or node.inputs[0] is None:
        return None
    stored = [_stored(node.inputs[1]), len(node.inputs) < 3 or node.inputs[2] is None or _stored(node.inputs[2])]
    if not all(stored):
        return None
    weight = _array(node.inputs[1]).shape
    rank = len(weight) - 2
    attrs = node.attributes
    strides = tuple(attrs.get_ints("strides", [1] * rank))
    dilations = tuple(attrs.get_ints("dilations", [1] * rank))
    kernel = tuple(int(k) for k in weight[2:])
    x = node.inputs[0]
    sizes = [d if isinstance(d, int) else None for d in (x.shape or [None] * (rank + 2))[2:]]
    pads = explicit_pads(
        attrs.get_string("auto_pad", "NOTSET"), attrs.get_ints("pads", []), kernel, strides, dilations, sizes
    )
    if isinstance(pads, str) or len(sizes) != rank:
        return None
    key = (id(x), strides, dilations, attrs.get_int("group", 1), weight[:2], node.inputs[1].dtype)  # type: ignore[union-attr]
    return Branch(node, ConvShape(kernel, pads, dilations), key)


def _stored(value: ir.Value | None) -> bool:
    """A floating-point initializer with its data, which no caller can override."""
    return (
        value is not None
        and value.is_initializer()
        and not value.is_graph_input()
        and value.const_value is not None
        and value.const_value.dtype in _FLOATS
    )


def _clusters(branches: list[Branch]) -> Iterator[tuple[list[Branch], Placement]]:
    """Branches grouped greedily (largest kernels first) into sets that merge, with their placement."""
    groups: list[tuple[list[Branch], Placement]] = []
    for branch in sorted(branches, key=lambda b: -_volume(b.shape.kernel)):
        for i, (members, _) in enumerate(groups):
            if members[0].key == branch.key:
                where = placement([m.shape for m in [*members, branch]])
                if where is not None:
                    groups[i] = ([*members, branch], where)
                    break
        else:
            groups.append(([branch], placement([branch.shape])))  # type: ignore[arg-type]
    yield from groups


def _volume(kernel: tuple[int, ...]) -> int:
    size = 1
    for k in kernel:
        size *= k
    return size


def _merged_conv(graph: ir.Graph, members: list[Branch], where: Placement, before: ir.Node) -> ir.Node:
    """One Conv computing the members' sum, inserted before ``before``, named as the first of them."""
    first = min(members, key=lambda b: _position(graph, b.node)).node
    weights = [_array(m.node.inputs[1]) for m in members]
    biases = [_array(m.node.inputs[2]) if len(m.node.inputs) > 2 else None for m in members]
    stem = f"{first.inputs[1].name if first.inputs[1] is not None else first.name}_merged"
    inputs = [first.inputs[0], _initializer(graph, stem, merged_kernel(weights, where))]
    bias = summed_bias(biases)
    if bias is not None:
        inputs.append(_initializer(graph, f"{stem}_bias", bias))
    attributes = [
        ir.AttrInt64s("kernel_shape", list(where.kernel)),
        ir.AttrInt64s("pads", list(where.pads)),
        ir.AttrInt64s("strides", list(first.attributes.get_ints("strides", [1] * len(where.kernel)))),
        ir.AttrInt64s("dilations", list(members[0].shape.dilations)),
        ir.AttrInt64("group", first.attributes.get_int("group", 1)),
    ]
    metadata = dict(first.metadata_props)
    conv = ir.Node("", "Conv", inputs, attributes=attributes, name=first.name, metadata_props=metadata)
    conv.outputs[0].type, conv.outputs[0].shape = first.outputs[0].type, first.outputs[0].shape
    graph.insert_before(before, conv)
    return conv


def _array(value: ir.Value | None) -> Any:
    """The numpy array of a stored value (a checked branch's weight or bias), None for an absent one."""
    return None if value is None or value.const_value is None else value.const_value.numpy()


def _position(graph: ir.Graph, node: ir.Node) -> int:
    return next(i for i, n in enumerate(graph) if n is node)


def _initializer(graph: ir.Graph, name: str, array: Any) -> ir.Value:
    taken, unique, n = graph.initializers, name, 1
    while unique in taken:
        unique, n = f"{name}_{n}", n + 1
    tensor = ir.tensor(array, name=unique)
    value = ir.Value(name=unique, const_value=tensor, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype))
    graph.register_initializer(value)
    return value


def _resum(graph: ir.Graph, root: ir.Node, leaves: list[ir.Value]) -> None:
    """Make the sum of ``leaves`` the value ``root`` computed: a chain of Adds before ``root`` (none for one
    leaf), whose last output takes over ``root``'s readers and name."""
    total = leaves[0]
    for n, leaf in enumerate(leaves[1:], 1):
        add = ir.Node("", "Add", [total, leaf], name=f"{root.name}_{n}" if n < len(leaves) - 1 else root.name)
        graph.insert_before(root, add)
        total = add.outputs[0]
    result = root.outputs[0]
    name, result.name = result.name, None
    total.name, total.shape, total.type = name, result.shape, result.type
    ir.convenience.replace_all_uses_with(result, total, replace_graph_outputs=True)


def _record(conv: ir.Node, members: list[Branch], where: Placement) -> dict[str, Any]:
    from bnfold.fold.onnx._names import module_name

    names = [module_name(ir.serde.serialize_node(m.node)) for m in members]
    return {"node": conv.name, "convs": sorted(names), "kernel_shape": list(where.kernel)}
