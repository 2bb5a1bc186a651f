"""Forward fold: push ``y = s·x + t`` (per channel along one axis of x) into whatever computes x.

Pattern: x is computed by a tree whose leaves are layers with weights and whose inner nodes pass a
per-channel affine through exactly (:func:`bnfold.fold.maths.fold_into_producer` and
:func:`~bnfold.fold.maths.fold_into_transposed_producer` at the leaves):

    layer P                                      W'[c] = W[c]·s[c],   b'[c] = b[c]·s[c] + t[c]
    add(P, b)  with b a per-channel constant:   P gets (s, 0),       b' = b·s + t
    add(P, Q)  (branches):                       P gets (s, t),       Q gets (s, 0)
    concat(P, Q, axis)                           along the channels: each gets its slice of (s, t);
                                                 along another axis: each gets all of (s, t)
    move(P)                                      P gets (s, t) along the axis the move takes the channels
                                                 from (a permute, a slice along another axis, a reshape
                                                 keeping the channel axis whole, nearest resizing, ...)

Check: every value in the tree is read only by its parent (no other node, not a model output), and every
leaf can absorb the affine along that axis; the first failure is the reason returned. Rewrite: only after
the whole tree checked, so a refused fold leaves the graph untouched; then the affine is bypassed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic

import torch

from bnfold.fold import maths
from bnfold.fold.rules.graph import Affine, FoldGraph, FoldLayer, Match, N, Plan, V

MAX_DEPTH = 8

Apply = Callable[[torch.Tensor, torch.Tensor | None], None]
"""Writes ``s·P + t`` into a subtree; a shift of None means scale only (no bias is created for it)."""


@dataclass
class Fold:
    """A checked subtree: how it folds, its output channels, the layers it folds into and its rewrite."""

    how: str
    channels: int
    into: list[str]
    apply: Apply


@dataclass
class _Walk(Generic[N, V]):
    graph: FoldGraph[N, V]

    def fold(self, value: V, use: tuple[N, int], axis: int, channels: int | None, depth: int, what: str) -> Fold | str:
        """The fold of an affine along ``axis`` of ``value`` (``what`` it reads, through ``use``)."""
        g = self.graph
        node = g.producer(value)
        op = None if node is None else g.pass_through(node)
        if node is None or (op is None and g.layer_kind(node) is None):
            return g.no_weights(value, what)
        shared = g.exclusive(value, use)
        if shared is not None:
            return shared
        if depth >= MAX_DEPTH:
            return f"{g.label(node)} is more than {MAX_DEPTH} nodes away from the affine"
        if op == "add":
            found = self.add(node, axis, channels, depth, what)
        elif op == "concat":
            found = self.concat(node, axis, channels, depth)
        elif op == "move":
            found = self.move(node, axis, channels, depth, what)
        else:
            found = self.layer(node, axis)
        if isinstance(found, str) or channels is None or found.channels == channels:
            return found
        return f"{g.label(node)} has {found.channels} output channels, the affine has {channels}"

    def layer(self, node: N, axis: int) -> Fold | str:
        layer = self.graph.layer(node)
        if isinstance(layer, str):
            return layer
        where = layer.channel_axis
        if where is None:
            return f"the rank of the output of {self.graph.label(node)} is unknown"
        if where != axis:
            on = f"its last axis ({where})" if layer.channels_last and where != 1 else f"axis {where}"
            return f"{self.graph.label(node)} has its channels on {on}, not on axis {axis}"
        return Fold("forward", layer.channels, [layer.name], lambda s, t: _into_layer(layer, s, t))

    def add(self, node: N, axis: int, channels: int | None, depth: int, what: str) -> Fold | str:
        g = self.graph
        rank, operands = g.rank(g.output(node)), g.inputs(node)
        if rank is None or len(operands) != 2:
            return f"the rank of the output of {g.label(node)} is unknown"
        constants = [g.constant(v) for v in operands]
        if all(c is None for c in constants):
            return self.branches(node, operands, axis, channels, depth, rank)
        slot = 0 if constants[0] is not None else 1
        bias = constants[slot]
        if bias is None or constants[1 - slot] is not None:
            return f"{g.label(node)} adds two constants"
        inner = self.fold(operands[1 - slot], (node, 1 - slot), axis, channels, depth + 1, what)
        if isinstance(inner, str):
            return inner
        vector = maths.channel_vector(bias, axis, rank, inner.channels)
        if vector is None or g.rank(operands[1 - slot]) != rank:
            return f"the constant added by {g.label(node)} is not one value per channel"
        shape = maths.channel_shape(bias.dim(), axis, rank, inner.channels)

        def apply(scale: torch.Tensor, shift: torch.Tensor | None) -> None:
            inner.apply(scale, None)
            t = torch.zeros_like(scale) if shift is None else shift
            g.write_param(node, slot, (vector * scale + t).reshape(shape))

        into = list(dict.fromkeys([*inner.into, g.name(node)]))
        return Fold(inner.how, inner.channels, into, apply)

    def branches(
        self, node: N, operands: list[V], axis: int, channels: int | None, depth: int, rank: int
    ) -> Fold | str:
        g = self.graph
        if any(g.rank(v) != rank for v in operands):
            return f"the inputs of {g.label(node)} broadcast to a higher rank"
        branches: list[Fold] = []
        for slot, value in enumerate(operands):
            branch = self.fold(value, (node, slot), axis, channels, depth + 1, f"a summand of {g.label(node)}")
            if isinstance(branch, str):
                return branch
            branches.append(branch)
        if branches[0].channels != branches[1].channels:
            return f"the branches of {g.label(node)} have different channel counts"

        def apply(scale: torch.Tensor, shift: torch.Tensor | None) -> None:
            for index, branch in enumerate(branches):
                branch.apply(scale, shift if index == 0 else None)

        into = [name for branch in branches for name in branch.into]
        return Fold("branches", branches[0].channels, into, apply)

    def concat(self, node: N, axis: int, channels: int | None, depth: int) -> Fold | str:
        g = self.graph
        rank = g.rank(g.output(node))
        if rank is None:
            return f"the rank of the output of {g.label(node)} is unknown"
        along = g.concat_axis(node) % rank == axis
        parts: list[Fold] = []
        for slot, value in enumerate(g.inputs(node)):
            what = f"slice {slot} of {g.label(node)}"
            part = self.fold(value, (node, slot), axis, None if along else channels, depth + 1, what)
            if isinstance(part, str):
                return part
            parts.append(part)

        def apply(scale: torch.Tensor, shift: torch.Tensor | None) -> None:
            start = 0
            for part in parts:
                end = start + part.channels if along else scale.numel()
                part.apply(scale[start:end], None if shift is None else shift[start:end])
                start = end if along else 0

        width = sum(p.channels for p in parts) if along else parts[0].channels
        return Fold("concat", width, [name for part in parts for name in part.into], apply)

    def move(self, node: N, axis: int, channels: int | None, depth: int, what: str) -> Fold | str:
        g = self.graph
        inner_axis = g.source_axis(node, axis)
        if isinstance(inner_axis, str):
            return inner_axis
        return self.fold(g.inputs(node)[0], (node, 0), inner_axis, channels, depth + 1, what)


def _into_layer(layer: FoldLayer, scale: torch.Tensor, shift: torch.Tensor | None) -> None:
    bias = layer.bias()
    t = torch.zeros_like(scale) if shift is None else shift
    if layer.kind == "conv_transpose":
        w, b = maths.fold_into_transposed_producer(layer.weight(), bias, scale, t, layer.groups)
    else:
        w, b = maths.fold_into_producer(layer.weight(), bias, scale, t)
    layer.write(w, b if bias is not None or shift is not None else None)


def match(graph: FoldGraph[N, V], affine: Affine[N, V]) -> Match:
    """The forward fold of ``affine`` into what computes its input, or why there is none."""
    channels = affine.scale.numel()
    found = _Walk(graph).fold(affine.input, affine.use, affine.axis, channels, 0, "its input")
    if isinstance(found, str):
        return found

    def rewrite() -> None:
        found.apply(affine.scale, affine.shift)
        graph.bypass(affine)

    return Plan(found.how, found.into, rewrite)
