"""Reading and writing the parameters of ONNX layers (Conv, ConvTranspose, Gemm, MatMul): a constant input
or the reason it is not one, β·C of a Gemm, a bias ``Add`` after a MatMul (which has no bias input), the
name of a rewritten parameter, and the check that refuses an invalid grouped conv.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from bnfold.errors import FoldError
from bnfold.fold.onnx._affine import to_f64
from bnfold.fold.onnx._graph import Graph, attribute, label, node_name


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


def gemm_bias(node: onnx.NodeProto, bias: np.ndarray | None, channels: int) -> torch.Tensor:
    """β·C of a Gemm as a float64 [rows, channels] tensor (rows is 1 unless C varies per row)."""
    if bias is None:
        return torch.zeros(1, channels, dtype=torch.float64)
    beta = float(attribute(node, "beta", 1.0))
    c = to_f64(bias)
    c = c.reshape(1, -1) if c.ndim < 2 else c
    return beta * torch.broadcast_to(c, (c.shape[0], channels)).clone()


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
