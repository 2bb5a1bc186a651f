"""Ops that move or copy values without combining them, as torch.export writes them (aten): which axis of
their input each axis of their output takes its values from.

A per-channel affine ``s·x + t`` along an axis commutes with such an op as long as the op keeps that axis
whole: every output value is a copy of one input value, at the same index along the mapped axis. So it
does for a permute or transpose (the axis moves), a slice or nearest-neighbour resize along other axes (values
dropped or repeated), unsqueeze and squeeze (axes of size 1 come and go), and a reshape that neither splits
the axis nor merges it with a neighbour (``flatten(2)`` of an ``N×C×H×W`` map keeps ``C``; ``flatten(1)``
does not). The forward and backward rules move an affine across them (:mod:`bnfold.fold.rules.graph`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from bnfold.fold.graph import PERMUTES, arguments, display, shape
from bnfold.fold.reasons import reason

aten = torch.ops.aten

SLICES = {aten.slice.Tensor, aten.narrow.default}
UNSQUEEZES = {aten.unsqueeze.default}
SQUEEZES = {aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims}
RESHAPES = {
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.flatten.using_ints,
    aten.unflatten.int,
}
NEAREST = {
    getattr(getattr(aten, f"{kind}{rank}d"), overload)
    for kind in ("upsample_nearest", "_upsample_nearest_exact")
    for rank in (1, 2, 3)
    for overload in ("default", "vec")
}
MOVES = PERMUTES | SLICES | UNSQUEEZES | SQUEEZES | RESHAPES | NEAREST

Axes = list[int | None]
"""For each output axis, the input axis it takes its values from whole, or None."""


def is_move(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in MOVES


def source_axis(node: fx.Node, axis: int) -> int | str:
    """The axis of ``node``'s input whose values go, each within its index, to ``axis`` of its output; or why
    there is none."""
    found = _axes(node)
    if isinstance(found, str):
        return found
    source = found[axis % len(found)] if found else None
    return source if source is not None else reason("not_whole", node=display(node))


def target_axis(node: fx.Node, axis: int) -> int | str:
    """The axis of ``node``'s output that ``axis`` of its input goes to whole; or why there is none."""
    found = _axes(node)
    if isinstance(found, str):
        return found
    rank = _rank(node.args[0])
    axis = axis % rank if rank else axis
    return found.index(axis) if axis in found else reason("not_whole", node=display(node))


def _axes(node: fx.Node) -> Axes | str:
    before, after = _shape_of(node.args[0]), shape(node)
    if before is None or after is None:
        return reason("shape_unknown", node=display(node))
    target = node.target
    if target in PERMUTES:
        return _permuted(node, len(after))
    if target in SLICES:
        return _sliced(node, before)
    if target in UNSQUEEZES:
        added = int(arguments(node)["dim"]) % len(after)
        return [None if i == added else i - (i > added) for i in range(len(after))]
    if target in SQUEEZES:
        return [i for i in range(len(before)) if not _squeezed(node, before, i)]
    if target in NEAREST:
        return [i if i < 2 else None for i in range(len(after))]
    return reshaped(before, after)


def _permuted(node: fx.Node, rank: int) -> Axes:
    args = arguments(node)
    if node.target == aten.permute.default:
        return [int(d) % rank for d in args["dims"]]
    order: Axes = list(range(rank))
    if node.target == aten.transpose.int:
        a, b = int(args["dim0"]) % rank, int(args["dim1"]) % rank
        order[a], order[b] = b, a
    return order


def _sliced(node: fx.Node, before: Sequence[Any]) -> Axes:
    args = arguments(node)
    dim = int(args["dim"]) % len(before)
    if node.target == aten.narrow.default:  # narrow(dim, start, length); -1: an end not known, not the whole axis
        start, length, step = args["start"], args["length"], 1
        end = start + length if isinstance(start, int) and isinstance(length, int) else -1
    else:
        start, end, step = args["start"], args["end"], args["step"]
    whole = start in (None, 0) and step == 1 and (end is None or _at_least(end, before[dim]))
    return [i if i != dim or whole else None for i in range(len(before))]


def _squeezed(node: fx.Node, before: Sequence[Any], axis: int) -> bool:
    if not _equal(before[axis], 1):
        return False
    if node.target == aten.squeeze.default:
        return True
    dims = arguments(node)["dim"]
    listed = dims if isinstance(dims, (list, tuple)) else [dims]
    return axis in {int(d) % len(before) for d in listed}


def reshaped(before: Sequence[Any], after: Sequence[Any]) -> Axes:
    """:func:`whole_axes` of a reshape of sizes known to torch.export (ints or symbols)."""
    return whole_axes(before, after, _equal, lambda a, b: _equal(math.prod(a), math.prod(b)))


def whole_axes(
    before: Sequence[Any],
    after: Sequence[Any],
    same_size: Callable[[Any, Any], bool],
    same_count: Callable[[Sequence[Any], Sequence[Any]], bool],
) -> Axes:
    """For each axis of a reshape's output, the input axis it keeps whole, or None: the same length, and as
    many elements before it or after it (then each element keeps its index along it). ``same_size`` and
    ``same_count`` say whether two sizes, and two runs of sizes, are known to be equal."""

    def whole(a: int, b: int) -> bool:
        if not same_size(before[b], after[a]):
            return False
        return same_count(before[:b], after[:a]) or same_count(before[b + 1 :], after[a + 1 :])

    return [next((b for b in range(len(before)) if whole(a, b)), None) for a in range(len(after))]


def _shape_of(value: Any) -> tuple[Any, ...] | None:
    return shape(value) if isinstance(value, fx.Node) else None


def _rank(value: Any) -> int | None:
    found = _shape_of(value)
    return None if found is None else len(found)


def _equal(a: Any, b: Any) -> bool:
    """Whether two sizes (ints or symbolic) are known to be equal, without adding a guard."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    try:
        return bool(statically_known_true(a == b))
    except Exception:  # noqa: BLE001 - an expression the shape environment cannot decide: not known equal
        return False


def _at_least(end: Any, size: Any) -> bool:
    if isinstance(end, int) and end >= 2**62:
        return True  # ``x[:, :n]`` past the end, ``x[:, :]``: torch writes the largest int64 as the end
    try:
        return bool(statically_known_true(end >= size))
    except Exception:  # noqa: BLE001
        return False
