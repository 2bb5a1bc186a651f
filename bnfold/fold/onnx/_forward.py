"""Forward fold: push ``y = s·x + t`` (per channel along one axis of x) into whatever computes x.

Pattern: x is computed by a tree whose leaves are layers with constant weights (:mod:`._layers`) and whose
inner nodes pass a per-channel affine through exactly:

    Add(P, b)  with b a per-channel constant:   P gets (s, 0),       b' = b·s + t
    Add(P, Q)  (branches):                       P gets (s, t),       Q gets (s, 0)
    Concat(P, Q, axis)                           along the channels: each gets its slice of (s, t);
                                                 along another axis: each gets all of (s, t)
    Transpose(P, perm)                           P gets (s, t) along axis perm[axis]

Check: every value in the tree is read only by its parent (no other node, not a graph output), and every
leaf can absorb the affine; the first failure is the reason returned. Rewrite: only after the whole tree
checked, so a failed fold leaves the graph untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx
import torch

from bnfold.fold import maths
from bnfold.fold.onnx._affine import channel_shape, channel_vector, describe_blocker, to_f64, to_numpy
from bnfold.fold.onnx._graph import Graph, Use, attribute, label
from bnfold.fold.onnx._layers import layer_fold
from bnfold.fold.onnx._names import module_name

MAX_DEPTH = 8
LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class Fold(Protocol):
    """A checked forward fold, ready to rewrite the graph."""

    @property
    def how(self) -> str: ...

    @property
    def channels(self) -> int: ...

    def into(self) -> list[str]: ...

    def apply(self, graph: Graph, scale: torch.Tensor, shift: torch.Tensor | None) -> None: ...


@dataclass
class BiasFold:
    """``Add(P, b)`` with a per-channel constant b."""

    node: onnx.NodeProto
    slot: int
    bias: np.ndarray
    vector: np.ndarray
    shape: list[int]
    inner: Fold

    @property
    def how(self) -> str:
        return self.inner.how

    @property
    def channels(self) -> int:
        return self.inner.channels

    def into(self) -> list[str]:
        return list(dict.fromkeys([*self.inner.into(), module_name(self.node)]))

    def apply(self, graph: Graph, scale: torch.Tensor, shift: torch.Tensor | None) -> None:
        self.inner.apply(graph, scale, None)
        t = torch.zeros_like(scale) if shift is None else shift
        b = maths.affine_reference(to_f64(self.vector).reshape(1, -1), scale, t).reshape(self.shape)
        name = self.node.input[self.slot]
        graph.write_param(self.node, self.slot, to_numpy(b, self.bias.dtype), f"{name}_folded")


@dataclass
class BranchesFold:
    """``Add(P, Q)``: the scale goes into every branch, the shift into the first only."""

    node: onnx.NodeProto
    branches: list[Fold]
    how = "branches"

    @property
    def channels(self) -> int:
        return self.branches[0].channels

    def into(self) -> list[str]:
        return [name for branch in self.branches for name in branch.into()]

    def apply(self, graph: Graph, scale: torch.Tensor, shift: torch.Tensor | None) -> None:
        for index, branch in enumerate(self.branches):
            branch.apply(graph, scale, shift if index == 0 else None)


@dataclass
class ConcatFold:
    """``Concat(P, Q, ...)``: slices of the affine along the channel axis, or all of it along another."""

    node: onnx.NodeProto
    parts: list[Fold]
    along_channels: bool
    how = "concat"

    @property
    def channels(self) -> int:
        sizes = [part.channels for part in self.parts]
        return sum(sizes) if self.along_channels else sizes[0]

    def into(self) -> list[str]:
        return [name for part in self.parts for name in part.into()]

    def apply(self, graph: Graph, scale: torch.Tensor, shift: torch.Tensor | None) -> None:
        start = 0
        for part in self.parts:
            end = start + part.channels if self.along_channels else scale.numel()
            part.apply(graph, scale[start:end], None if shift is None else shift[start:end])
            start = end if self.along_channels else 0


@dataclass
class TransposeFold:
    """``Transpose(P)``: the affine moves to axis ``perm[axis]`` of P."""

    inner: Fold

    @property
    def how(self) -> str:
        return self.inner.how

    @property
    def channels(self) -> int:
        return self.inner.channels

    def into(self) -> list[str]:
        return self.inner.into()

    def apply(self, graph: Graph, scale: torch.Tensor, shift: torch.Tensor | None) -> None:
        self.inner.apply(graph, scale, shift)


PASSES = ("Add", "Concat", "Transpose")


def forward_fold(
    graph: Graph, value: str, use: Use, axis: int, channels: int | None, depth: int = 0, what: str = "its input"
) -> Fold | str:
    """The fold of an affine along ``axis`` of ``value`` (``what`` it reads, by ``use``) into what computes
    it."""
    node = graph.producer.get(value)
    if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in (*LAYERS, *PASSES):
        return describe_blocker(graph, value, what)
    shared = graph.exclusive(value, use)
    if shared is not None:
        return shared
    if depth >= MAX_DEPTH:
        return f"{label(node)} is more than {MAX_DEPTH} nodes away from the affine"
    fold = _by_op(graph, node, axis, channels, depth, what)
    if isinstance(fold, str) or channels is None or fold.channels == channels:
        return fold
    return f"{label(node)} has {fold.channels} output channels, the affine has {channels}"


def _by_op(graph: Graph, node: onnx.NodeProto, axis: int, channels: int | None, depth: int, what: str) -> Fold | str:
    if node.op_type in LAYERS:
        return layer_fold(graph, node, axis)
    if node.op_type == "Add":
        return _add(graph, node, axis, channels, depth, what)
    if node.op_type == "Concat":
        return _concat(graph, node, axis, channels, depth)
    return _transpose(graph, node, axis, channels, depth, what)


def _add(graph: Graph, node: onnx.NodeProto, axis: int, channels: int | None, depth: int, what: str) -> Fold | str:
    rank = graph.rank(node.output[0])
    constants = [graph.constant(name) for name in node.input]
    if rank is None or len(node.input) != 2:
        return f"the rank of the output of {label(node)} is unknown"
    if all(c is None for c in constants):
        return _branches(graph, node, axis, channels, depth, rank)
    slot = 0 if constants[0] is not None else 1
    bias = constants[slot]
    if bias is None or constants[1 - slot] is not None:
        return f"{label(node)} adds two constants"
    inner = forward_fold(graph, node.input[1 - slot], (node, 1 - slot), axis, channels, depth + 1, what)
    if isinstance(inner, str):
        return inner
    vector = channel_vector(bias, axis, rank, inner.channels)
    if vector is None or graph.rank(node.input[1 - slot]) != rank:
        return f"the constant added by {label(node)} is not one value per channel"
    return BiasFold(node, slot, bias, vector, channel_shape(bias.ndim, axis, rank, inner.channels), inner)


def _branches(graph: Graph, node: onnx.NodeProto, axis: int, channels: int | None, depth: int, rank: int) -> Fold | str:
    if any(graph.rank(name) != rank for name in node.input):
        return f"the inputs of {label(node)} broadcast to a higher rank"
    branches = []
    for slot, name in enumerate(node.input):
        what = f"a summand of {label(node)}"
        branch = forward_fold(graph, name, (node, slot), axis, channels, depth + 1, what)
        if isinstance(branch, str):
            return branch
        branches.append(branch)
    if branches[0].channels != branches[1].channels:
        return f"the branches of {label(node)} have different channel counts"
    return BranchesFold(node, branches)


def _concat(graph: Graph, node: onnx.NodeProto, axis: int, channels: int | None, depth: int) -> Fold | str:
    rank = graph.rank(node.output[0])
    if rank is None:
        return f"the rank of the output of {label(node)} is unknown"
    along = int(attribute(node, "axis", 0)) % rank == axis
    parts = []
    for slot, name in enumerate(node.input):
        what = f"slice {slot} of {label(node)}"
        part = forward_fold(graph, name, (node, slot), axis, None if along else channels, depth + 1, what)
        if isinstance(part, str):
            return part
        parts.append(part)
    return ConcatFold(node, parts, along)


def _transpose(
    graph: Graph, node: onnx.NodeProto, axis: int, channels: int | None, depth: int, what: str
) -> Fold | str:
    perm = attribute(node, "perm")
    rank = graph.rank(node.output[0]) if perm is None else len(perm)
    if rank is None:
        return f"the rank of the output of {label(node)} is unknown"
    inner_axis = list(perm)[axis] if perm is not None else rank - 1 - axis
    inner = forward_fold(graph, node.input[0], (node, 0), inner_axis, channels, depth + 1, what)
    return inner if isinstance(inner, str) else TransposeFold(inner)
