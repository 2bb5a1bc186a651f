"""``Slice`` nodes that cut one value into consecutive pieces along an axis, as ``torch.chunk`` and
``torch.split`` export through the TorchScript exporter, become one ``Split`` (the dynamo exporter writes a
Split for them). onnxscript's ``slice_split_rule`` does this for two halves of the last axis only, and its
two-output pattern binds both slices to the same node first; channels are axis 1 and chunks may be many.

Exact: a Split returns the same elements as the slices it replaces. Only slices with constant one-axis
bounds and unit steps, along an axis of known size, that together tile the axis without gap or overlap.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_ir as ir

Piece = tuple[int, int, ir.Node]  # start, end, the Slice node


class SlicesToSplit(ir.passes.InPlacePass):
    """Replace each set of Slices of one value that tiles one of its axes by a Split (opset 13 on)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        groups: dict[tuple[ir.Value, int], list[Piece]] = defaultdict(list)
        for node in model.graph:
            found = _piece(node)
            if found is not None:
                value, axis, start, end = found
                groups[value, axis].append((start, end, node))
        for (value, axis), pieces in groups.items():
            if _tiles(pieces, value, axis):
                _split(model.graph, value, axis, pieces)
                modified = True
        return ir.passes.PassResult(model, modified)


def _piece(node: ir.Node) -> tuple[ir.Value, int, int, int] | None:
    """(sliced value, axis, start, end) of a Slice along one axis with constant bounds and step 1."""
    if node.op_type != "Slice" or node.domain not in ("", "ai.onnx") or not 4 <= len(node.inputs) <= 5:
        return None
    value = node.inputs[0]
    bounds = [_ints(v) for v in node.inputs[1:]]
    if value is None or value.shape is None or any(b is None or len(b) != 1 for b in bounds):
        return None
    start, end, axis = (b[0] for b in bounds[:3])  # type: ignore[index]
    if len(bounds) == 5 and bounds[4] != [1]:
        return None
    rank = len(value.shape)
    axis = axis + rank if axis < 0 else axis
    size = value.shape[axis] if 0 <= axis < rank else None
    if not isinstance(size, int):
        return None
    start, end = (min(max(i + size if i < 0 else i, 0), size) for i in (start, end))
    return value, axis, start, end


def _ints(value: ir.Value | None) -> list[int] | None:
    if value is None or value.const_value is None:
        return None
    return [int(i) for i in value.const_value.numpy().reshape(-1)]


def _tiles(pieces: list[Piece], value: ir.Value, axis: int) -> bool:
    """Whether the pieces (two or more, none empty) cover the axis end to end, each element once."""
    size = value.shape[axis] if value.shape is not None else None
    ordered = sorted((start, end) for start, end, _ in pieces)
    edges = [0, *(end for _, end in ordered)]
    joined = all(start == edge < end for (start, end), edge in zip(ordered, edges, strict=False))
    return len(pieces) > 1 and joined and edges[-1] == size


def _split(graph: ir.Graph, value: ir.Value, axis: int, pieces: list[Piece]) -> None:
    """One Split in place of the pieces (given in graph order), its outputs named as theirs."""
    first = pieces[0][2]
    pieces = sorted(pieces, key=lambda p: p[0])
    sizes = ir.Value(name=f"{first.name}_split_sizes")
    sizes.const_value = ir.tensor(np.array([e - s for s, e, _ in pieces], dtype=np.int64))
    graph.register_initializer(sizes)
    split = ir.Node(
        "",
        "Split",
        [value, sizes],
        attributes=[ir.AttrInt64("axis", axis)],
        num_outputs=len(pieces),
        name=f"{first.name}_split",
    )
    graph.insert_before(first, split)
    for (_, _, node), output in zip(pieces, split.outputs, strict=True):
        old = node.outputs[0]
        name, old.name = old.name, None
        output.name, output.shape, output.type = name, old.shape, old.type
        ir.convenience.replace_all_uses_with(old, output, replace_graph_outputs=True)
        graph.remove(node, safe=True)
