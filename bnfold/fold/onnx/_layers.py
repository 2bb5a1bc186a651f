"""Forward folds into the layer that produces the affine's input: Conv, ConvTranspose, Gemm, MatMul.

Per output channel c (the formulas of :mod:`bnfold.fold.maths`, computed there in float64):

    Conv / ConvTranspose / MatMul:  W'[c] = W[c]·s[c]        b'[c] = b[c]·s[c] + t[c]
    Gemm  Y = α·A·B + β·C:          B'[:, c] = B[:, c]·s[c]  C' = (β·C)·s + t,  β' = 1

A MatMul has no bias input, so a shift adds an ``Add`` after it. Each builder checks the layer (constant
weights, the affine's axis is the layer's channel axis) and returns either a fold or the reason it cannot.
``shift=None`` means "scale only" (the other branches of an ``Add``), so no bias is created for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch

from bnfold.errors import FoldError
from bnfold.fold import maths
from bnfold.fold.onnx._affine import to_f64, to_numpy
from bnfold.fold.onnx._graph import Graph, attribute, label, node_name, set_attribute
from bnfold.fold.onnx._names import module_name


def param_name(node: onnx.NodeProto, slot: int, role: str) -> str:
    """A base name for a rewritten parameter: the old one plus ``_folded``, or ``<node>_<role>``."""
    old = node.input[slot] if slot < len(node.input) else ""
    return f"{old}_folded" if old else f"{node_name(node)}_{role}"


def optional_constant(graph: Graph, node: onnx.NodeProto, slot: int) -> tuple[np.ndarray | None, str | None]:
    """(value, None) for a constant or absent input; (None, reason) when it is computed at run time."""
    if slot >= len(node.input) or not node.input[slot]:
        return None, None
    name = node.input[slot]
    value = graph.constant(name)
    if value is None and graph.overridable(name):
        role = ("weight", "bias")[slot - 1] if slot in (1, 2) else f"input {slot}"
        return None, f"the {role} of {label(node)} can be overridden by the graph input '{name}'"
    if value is None:
        return None, f"input '{name}' of {label(node)} is not a constant"
    return value, None


def append_bias(graph: Graph, node: onnx.NodeProto, bias: np.ndarray) -> None:
    """Add ``bias`` to the output of ``node`` with a new ``Add``; the output keeps its name."""
    output = node.output[0]
    graph.set_output(node, 0, graph.fresh(f"{output}_unbiased"))
    name = graph.add_initializer(f"{node_name(node)}_bias", bias)
    add_name = graph.fresh(f"{node_name(node)}_bias_add")
    add = onnx.helper.make_node("Add", [node.output[0], name], [output], name=add_name)
    graph.insert(add, at=node)


@dataclass
class ConvFold:
    """Conv (weight [C_out, C_in/g, k...]) or ConvTranspose (weight [C_in, C_out/g, k...])."""

    node: onnx.NodeProto
    weight: np.ndarray
    bias: np.ndarray | None
    how = "forward"

    @property
    def groups(self) -> int:
        return int(attribute(self.node, "group", 1))

    @property
    def channels(self) -> int:
        transposed = self.node.op_type == "ConvTranspose"
        return int(self.weight.shape[1] * self.groups if transposed else self.weight.shape[0])

    def into(self) -> list[str]:
        return [module_name(self.node)]

    def apply(self, graph: Graph, scale: torch.Tensor, shift: torch.Tensor | None) -> None:
        t = torch.zeros_like(scale) if shift is None else shift
        w64, b64 = to_f64(self.weight), None if self.bias is None else to_f64(self.bias)
        if self.node.op_type == "ConvTranspose":
            w, b = maths.fold_into_transposed_producer(w64, b64, scale, t, self.groups)
        else:
            w, b = maths.fold_into_producer(w64, b64, scale, t)
        graph.write_param(self.node, 1, to_numpy(w, self.weight.dtype), param_name(self.node, 1, "weight"))
        if self.bias is not None or shift is not None:
            dtype = self.weight.dtype if self.bias is None else self.bias.dtype
            graph.write_param(self.node, 2, to_numpy(b, dtype), param_name(self.node, 2, "bias"))


@dataclass
class GemmFold:
    """Gemm ``Y = α·op(A)·op(B) + β·C`` with a constant B (and C, if any); channels on axis 1 of Y."""

    node: onnx.NodeProto
    weight: np.ndarray
    bias: np.ndarray | None
    how = "forward"

    @property
    def trans_b(self) -> bool:
        return bool(attribute(self.node, "transB", 0))

    @property
    def channels(self) -> int:
        return int(self.weight.shape[0 if self.trans_b else 1])

    def into(self) -> list[str]:
        return [module_name(self.node)]

    def apply(self, graph: Graph, scale: torch.Tensor, shift: torch.Tensor | None) -> None:
        t = torch.zeros_like(scale) if shift is None else shift
        rows = to_f64(self.weight if self.trans_b else self.weight.T)
        w, _ = maths.fold_into_producer(rows, None, scale, t)
        w = w if self.trans_b else w.T
        graph.write_param(self.node, 1, to_numpy(w, self.weight.dtype), param_name(self.node, 1, "weight"))
        if self.bias is None and shift is None:
            return
        c = gemm_bias(self.node, self.bias, self.channels)
        c = maths.affine_reference(c, scale, t, axis=1)
        c = c.reshape(-1) if c.shape[0] == 1 else c
        dtype = self.weight.dtype if self.bias is None else self.bias.dtype
        graph.write_param(self.node, 2, to_numpy(c, dtype), param_name(self.node, 2, "bias"))
        set_attribute(self.node, "beta", 1.0)


def gemm_bias(node: onnx.NodeProto, bias: np.ndarray | None, channels: int) -> torch.Tensor:
    """β·C of a Gemm as a float64 [rows, channels] tensor (rows is 1 unless C varies per row)."""
    if bias is None:
        return torch.zeros(1, channels, dtype=torch.float64)
    beta = float(attribute(node, "beta", 1.0))
    c = to_f64(bias)
    c = c.reshape(1, -1) if c.ndim < 2 else c
    return beta * torch.broadcast_to(c, (c.shape[0], channels)).clone()


@dataclass
class MatMulFold:
    """MatMul ``Y = X·W`` with a constant 2-D W [K, C]; channels on the last axis of Y."""

    node: onnx.NodeProto
    weight: np.ndarray
    rank: int
    how = "forward"

    @property
    def channels(self) -> int:
        return int(self.weight.shape[1])

    def into(self) -> list[str]:
        return [module_name(self.node)]

    def apply(self, graph: Graph, scale: torch.Tensor, shift: torch.Tensor | None) -> None:
        t = torch.zeros_like(scale) if shift is None else shift
        w, b = maths.fold_into_producer(to_f64(self.weight.T), None, scale, t)
        graph.write_param(self.node, 1, to_numpy(w.T, self.weight.dtype), param_name(self.node, 1, "weight"))
        if shift is not None:
            append_bias(graph, self.node, to_numpy(b, self.weight.dtype))


def check_groups(node: onnx.NodeProto, weight: np.ndarray) -> None:
    """Refuse a Conv or ConvTranspose whose weight does not split into its groups: the model is invalid (no
    runtime can run it), and no fold of it means anything."""
    if node.op_type not in ("Conv", "ConvTranspose"):
        return
    groups = int(attribute(node, "group", 1))
    split = weight.shape[0] if weight.ndim else 0
    if groups < 1 or weight.ndim < 3 or split % groups:
        raise FoldError(
            f"the model is invalid: {label(node)} has group={groups} but a weight of shape "
            f"{list(weight.shape)}, whose axis 0 ({split}) does not divide into {groups} groups"
        )


def layer_fold(graph: Graph, node: onnx.NodeProto, axis: int) -> ConvFold | GemmFold | MatMulFold | str:
    """The forward fold of an affine along ``axis`` of the output of ``node``, or why there is none."""
    weight, reason = optional_constant(graph, node, 1)
    bias, bias_reason = optional_constant(graph, node, 2)
    if weight is None:
        return reason or f"{label(node)} has no weight"
    check_groups(node, weight)
    if bias_reason or not np.issubdtype(weight.dtype, np.floating):
        return bias_reason or f"weight of {label(node)} is not floating point"
    if node.op_type in ("Conv", "ConvTranspose", "Gemm") and axis != 1:
        return f"{label(node)} has its channels on axis 1, not on axis {axis}"
    if node.op_type == "Gemm":
        return GemmFold(node, weight, bias)
    if node.op_type != "MatMul":
        return ConvFold(node, weight, bias)
    rank = graph.rank(node.output[0])
    if weight.ndim != 2 or rank is None or rank < 2:
        return f"{label(node)} needs a constant 2-D weight and an input of known rank >= 2"
    if axis != rank - 1:
        return f"{label(node)} has its channels on its last axis ({rank - 1}), not on axis {axis}"
    return MatMulFold(node, weight, rank)
