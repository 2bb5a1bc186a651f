"""Backward fold: push ``y = s·x + t`` (per channel along one axis of x) into every layer that reads y
(:func:`bnfold.fold.maths.fold_into_consumer`, over the input channels i and kernel taps k a layer reads):

    W'[o, i, k] = W[o, i, k]·s[i]        b'[o] = b[o] + α·Σ_{i,k} W[o, i, k]·t[i]

(α is 1 except for a Gemm, which scales its product by α). Pattern: y is read only by convs and linear
layers (on their data input, along the channels they read), directly or through moves (permutes, slices
along other axes, reshapes keeping the channel axis whole, ...: :mod:`.graph`), through pads that copy
values (reflect, replicate/edge, circular/wrap) and through a concatenation along another axis of copies
of y alone (a circular pad written as slices and a Concat): these commute with a per-channel affine. Check:
every output position of a conv sees the whole kernel over real input, so a conv must not pad with zeros (a
padded border would see 0, not t, and the bias would be wrong there); a transposed conv spreads a constant
unevenly over its output, so it never qualifies; no pad along the channel axis; y is no model output; the
channel counts agree. Every reader must qualify, or nothing is folded. Rewrite: every layer, then what read
y reads x.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic

import torch

from bnfold.fold import maths
from bnfold.fold.reasons import reason
from bnfold.fold.rules.graph import Affine, FoldGraph, FoldLayer, Match, N, Plan, V


def match(graph: FoldGraph[N, V], affine: Affine[N, V]) -> Match:
    """The backward fold of ``affine`` into every layer that reads its output, or why there is none."""
    channels = affine.scale.numel()
    found = _Consumers(graph, channels, affine.output, affine.axis).of(affine.output, affine.axis)
    if isinstance(found, str):
        return found
    layers = found

    def rewrite() -> None:
        for layer in layers:
            _into_layer(layer, affine.scale, affine.shift)
        graph.reroute(affine)

    return Plan("backward", list(dict.fromkeys(layer.name for layer in layers)), rewrite)


def _into_layer(layer: FoldLayer, scale: torch.Tensor, shift: torch.Tensor) -> None:
    alpha, bias = layer.weight_scale, layer.bias()
    w, b = maths.fold_into_consumer(layer.weight(), bias if alpha == 1 else None, scale, shift, layer.groups)
    if alpha != 1:
        b = (torch.zeros_like(b) if bias is None else bias) + alpha * b
    layer.write(w, b)


@dataclass
class _Consumers(Generic[N, V]):
    graph: FoldGraph[N, V]
    channels: int
    source: V  # the affine's output
    axis: int  # its channel axis
    joined: list[N] = field(default_factory=list)  # the concatenations of copies already followed

    def of(self, value: V, axis: int) -> list[FoldLayer] | str:
        """Every layer reached from ``value`` (the affine along ``axis``), or why one cannot take it."""
        g = self.graph
        if g.is_output(value):
            return reason("model_output")
        found: list[FoldLayer] = []
        for node, slot in g.readers(value):
            layers = self.reader(node, slot, axis)
            if isinstance(layers, str):
                return layers
            found.extend(layers)
        return found

    def reader(self, node: N, slot: int, axis: int) -> list[FoldLayer] | str:
        g = self.graph
        if g.pass_through(node) == "move" and slot == 0:
            mapped = g.target_axis(node, axis)
            if isinstance(mapped, str):
                return mapped
            return self.of(g.output(node), mapped)
        if g.pass_through(node) == "concat":
            return self.concat(node, axis)
        pad = g.pad(node)
        if pad is not None:
            if slot != 0:
                return reason("not_a_layer", node=g.label(node))
            if not pad.copies:
                return reason("pad_values", pad=g.label(node), mode=pad.mode)
            if pad.padded_axes is None:
                return f"the pads of {g.label(node)} are not constant"
            if axis in pad.padded_axes:
                return reason("pad_channels", pad=g.label(node))
            return self.of(g.output(node), axis)
        found = self.layer(node, slot, axis)
        return found if isinstance(found, str) else [found]

    def concat(self, node: N, axis: int) -> list[FoldLayer] | str:
        """A concatenation along another axis of pieces that are all copies of the affine's output (a circular
        pad written as slices and a Concat): a move of it, followed once."""
        g = self.graph
        rank = g.rank(g.output(node))
        if rank is None or g.concat_axis(node) % rank == axis:
            return reason("not_a_layer", node=g.label(node))
        if not all(self.copies(piece, axis) for piece in g.inputs(node)):
            return reason("joined", node=g.label(node))
        if node in self.joined:
            return []  # reached again through another of its pieces
        self.joined.append(node)
        return self.of(g.output(node), axis)

    def copies(self, value: V, axis: int, depth: int = 0) -> bool:
        """Whether ``value`` is the affine's output moved or joined to copies of itself, its channel axis now
        ``axis``."""
        g = self.graph
        if value == self.source:
            return axis == self.axis
        node = g.producer(value)
        if node is None or depth >= 8:
            return False
        kind = g.pass_through(node)
        if kind == "concat":
            rank = g.rank(value)
            along = rank is None or g.concat_axis(node) % rank == axis
            return not along and all(self.copies(piece, axis, depth + 1) for piece in g.inputs(node))
        found = g.source_axis(node, axis) if kind == "move" else "not a move"
        return not isinstance(found, str) and self.copies(g.inputs(node)[0], found, depth + 1)

    def layer(self, node: N, slot: int, axis: int) -> FoldLayer | str:
        g = self.graph
        kind = g.layer_kind(node)
        if kind is None:
            return reason("not_a_layer", node=g.label(node))
        if kind == "conv_transpose":
            return reason("transposed_consumer", layer=g.name(node))
        if slot != 0:
            return f"its output is not the data input of {g.label(node)}"
        layer = g.layer(node)
        if isinstance(layer, str):
            return layer
        reads = layer.input_channel_axis
        if reads is None:
            return f"{g.label(node)} does not contract the affine's channel axis"
        if reads != axis:
            return f"{g.label(node)} reads its channels on axis {reads}, not on axis {axis}"
        if _zero_padded(layer):
            return reason("zero_padding", layer=layer.name, padding=layer.padding_text)
        width = layer.weight_shape[1] * layer.groups
        if width != self.channels:
            return f"{g.label(node)} reads {width} channels, the affine has {self.channels}"
        return layer


def _zero_padded(layer: FoldLayer) -> bool:
    if layer.pads == "same":
        return any(k != 1 for k in layer.weight_shape[2:])
    return layer.pads != "valid" and any(p != 0 for p in layer.pads)
