"""ONNX ops that move or copy values without combining them: which axis of their input each axis of their
output takes its values from (:mod:`bnfold.fold.moves` for the same ops in aten, and why an affine commutes
with them).

Transpose (the axes permuted), Slice along other axes (an axis sliced whole, start 0 to its end by 1, is
kept), Unsqueeze and Squeeze (constant axes), Reshape and Flatten (an axis kept whole: the same length, and
the same elements before it or after it, as shape inference gives their dimensions) and a nearest-neighbour
Resize (axes it leaves at their size). An op's inputs other than its data must be constants.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx

from bnfold.fold.moves import whole_axes
from bnfold.fold.onnx._graph import Graph, attribute, label
from bnfold.fold.reasons import reason

MOVES = ("Transpose", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Resize")
INT64_MAX = np.iinfo(np.int64).max

Axes = list[int | None]
"""For each output axis, the input axis it takes its values from whole, or None."""
Dims = tuple[int | str | None, ...]


def source_axis(graph: Graph, node: onnx.NodeProto, axis: int) -> int | str:
    """The axis of the input of ``node`` whose values go, each within its index, to ``axis`` of its output;
    or why there is none."""
    found = _axes(graph, node)
    if isinstance(found, str):
        return found
    source = found[axis % len(found)] if found else None
    return source if source is not None else reason("not_whole", node=label(node))


def target_axis(graph: Graph, node: onnx.NodeProto, axis: int) -> int | str:
    """The axis of the output of ``node`` that ``axis`` of its input goes to whole; or why there is none."""
    found = _axes(graph, node)
    if isinstance(found, str):
        return found
    rank = graph.rank(node.input[0])
    axis = axis % rank if rank else axis
    return found.index(axis) if axis in found else reason("not_whole", node=label(node))


def is_move(node: onnx.NodeProto) -> bool:
    """A move: one of :data:`MOVES` (a Resize only when nearest-neighbour: others mix values; and not cropping,
    which writes ``extrapolation_value`` where its region reaches past the input)."""
    if node.op_type != "Resize":
        return node.op_type in MOVES
    crop = attribute(node, "coordinate_transformation_mode", b"half_pixel")
    crop = crop.decode() if isinstance(crop, bytes) else str(crop)
    return _mode(node) == "nearest" and crop != "tf_crop_and_resize"


def _mode(node: onnx.NodeProto) -> str:
    mode = attribute(node, "mode", b"nearest")
    return mode.decode() if isinstance(mode, bytes) else str(mode)


def _axes(graph: Graph, node: onnx.NodeProto) -> Axes | str:
    before, after = graph.dims(node.input[0]), graph.dims(node.output[0])
    if before is None or after is None:
        return reason("shape_unknown", node=label(node))
    if node.op_type == "Transpose":
        perm = attribute(node, "perm")
        order = [int(p) for p in perm] if perm is not None else list(range(len(after)))[::-1]
        return list[int | None](order)
    if node.op_type in ("Reshape", "Flatten"):
        return reshaped(before, after)
    operands = [graph.constant(name) if name else None for name in node.input[1:]]
    if any(name and value is None for name, value in zip(node.input[1:], operands, strict=True)):
        return f"{label(node)} takes a computed {'shape' if node.op_type == 'Resize' else 'range or axes'}"
    if node.op_type == "Slice":
        return _sliced(node, before, operands)
    if node.op_type in ("Squeeze", "Unsqueeze"):
        listed = operands[0] if operands else attribute(node, "axes")
        return _squeezed(node, before, after, listed)
    return _resized(node, before, operands)


def _sliced(node: onnx.NodeProto, before: Dims, operands: Sequence[np.ndarray | None]) -> Axes | str:
    if operands:
        starts, ends, axes, steps = [*operands, None, None][:4]
    else:  # before opset 10: attributes
        starts, ends, axes, steps = attribute(node, "starts"), attribute(node, "ends"), attribute(node, "axes"), None
    if starts is None or ends is None:
        return f"{label(node)} has no range"
    rank = len(before)
    sliced = [int(a) % rank for a in (axes if axes is not None else range(len(starts)))]
    strides = [int(s) for s in steps] if steps is not None else [1] * len(sliced)
    cut = set()
    for axis, start, end, step in zip(sliced, starts, ends, strides, strict=True):
        size = before[axis]
        to_end = int(end) >= INT64_MAX // 2 or (isinstance(size, int) and int(end) >= size)
        if not (int(start) == 0 and step == 1 and to_end):
            cut.add(axis)
    return [None if i in cut else i for i in range(rank)]


def _squeezed(node: onnx.NodeProto, before: Dims, after: Dims, listed: object) -> Axes | str:
    if node.op_type == "Unsqueeze":
        if listed is None:
            return f"{label(node)} has no axes"
        added = {int(a) % len(after) for a in listed}  # type: ignore[attr-defined]
        kept = iter(range(len(before)))
        return [None if i in added else next(kept) for i in range(len(after))]
    if listed is None:
        removed = {i for i, d in enumerate(before) if d == 1}
        if any(d is None or isinstance(d, str) for d in before):
            return f"{label(node)} squeezes axes of unknown size"
    else:
        removed = {int(a) % len(before) for a in listed}  # type: ignore[attr-defined]
    return [i for i in range(len(before)) if i not in removed]


def _resized(node: onnx.NodeProto, before: Dims, operands: Sequence[np.ndarray | None]) -> Axes | str:
    scales, sizes = ([*operands, None, None, None][1:3]) if operands else (None, None)
    axes = attribute(node, "axes")
    resized = [int(a) % len(before) for a in axes] if axes is not None else list(range(len(before)))
    kept = set(range(len(before))) - set(resized)
    for slot, axis in enumerate(resized):
        if scales is not None and scales.size and float(scales[slot]) == 1.0:
            kept.add(axis)
        elif sizes is not None and sizes.size and isinstance(before[axis], int) and int(sizes[slot]) == before[axis]:
            kept.add(axis)
    return [i if i in kept else None for i in range(len(before))]


def reshaped(before: Dims, after: Dims) -> Axes:
    """:func:`bnfold.fold.moves.whole_axes` of a reshape whose sizes shape inference gave: symbolic sizes
    compare by name (``batch×8×64`` and ``unk×8×64`` share the ``8``, their tails being alike)."""
    return whole_axes(before, after, lambda a, b: a is not None and a == b, _same)


def _same(first: Sequence[int | str | None], second: Sequence[int | str | None]) -> bool:
    """Whether two runs of dimensions hold as many elements: equal products of their known sizes and the same
    symbolic names (any unknown dimension: not known to be the same)."""
    if None in first or None in second:
        return False
    numbers = [math.prod(int(d) for d in run if isinstance(d, int)) for run in (first, second)]
    names = [sorted(str(d) for d in run if isinstance(d, str)) for run in (first, second)]
    return numbers[0] == numbers[1] and names[0] == names[1]
