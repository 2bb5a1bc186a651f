"""Recognising BN-like nodes as per-channel affines ``y = s·x + t`` along one axis of ``x``.

Two patterns are recognised:

* ``BatchNormalization`` in inference form (one output, ``training_mode=0``, spatial): channel axis 1,
  ``s = γ / √(σ² + ε)``, ``t = β − μ·s`` from :func:`bnfold.fold.maths.batchnorm_affine`;
* ``Mul`` by a per-channel constant, and the ``Add`` of a per-channel constant that follows it if any, right
  after a layer with constant weights (what a frozen BN, e.g. torchvision's ``FrozenBatchNorm2d``, exports
  to, or a layer scale): ``s`` and ``t`` are the two constants broadcast to one value per channel (t = 0
  without the Add).

Anything that looks like a BN but is not such an affine comes back as a reason to keep it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch

from bnfold.errors import FoldError
from bnfold.fold import maths
from bnfold.fold.onnx._graph import Graph, Use, attribute, node_name
from bnfold.fold.onnx._names import module_name
from bnfold.fold.reasons import reason

BATCHNORM = "BatchNormalization"
MUL_ADD = "Mul/Add"
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class ChannelAffine:
    """``output = scale·input + shift`` along ``axis`` of ``input``, computed by ``nodes``."""

    name: str
    kind: str
    nodes: list[onnx.NodeProto]
    input: str
    output: str
    axis: int
    scale: torch.Tensor
    shift: torch.Tensor

    @property
    def channels(self) -> int:
        return int(self.scale.numel())

    @property
    def first(self) -> onnx.NodeProto:
        return self.nodes[0]

    @property
    def use(self) -> Use:
        """The input slot through which the affine reads its input."""
        return self.first, list(self.first.input).index(self.input)


def to_f64(array: np.ndarray) -> torch.Tensor:
    """numpy (any float dtype, also float16 or bfloat16) to a float64 torch tensor (a copy).

    The copy keeps the memory order of ``array``, so the transposed view of a large weight converts
    without a strided gather, and transposing the result back is contiguous again.
    """
    return torch.from_numpy(np.asarray(array).astype(np.float64, order="K"))


def to_numpy(tensor: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """A float64 torch result back to numpy in the dtype of the initializer it replaces."""
    return tensor.detach().to(torch.float64).numpy().astype(dtype)


def batchnorm(graph: Graph, node: onnx.NodeProto) -> ChannelAffine | str:
    """The affine of an inference BatchNormalization, or why it is kept as it is."""
    outputs = [name for name in node.output if name]
    if any(graph.depends_on(name, node.input[0]) for name in node.input[3:5] if name):
        return reason("no_running_stats")  # the exporters' form of a BN without running statistics
    if attribute(node, "training_mode", 0):
        return reason("batch_stats")
    if len(outputs) > 1:
        return f"it also outputs its running statistics ({len(outputs)} outputs)"
    if not attribute(node, "spatial", 1):
        return "spatial=0 (statistics per activation, not per channel) is not supported"
    fed = next((name for name in node.input[1:5] if graph.overridable(name)), None)
    if fed is not None:
        return f"its parameters can be overridden by the graph input '{fed}'"
    params = [graph.constant(name) for name in node.input[1:5] if name]
    values = [to_f64(p) for p in params if p is not None]
    if len(values) < 4:
        return "its scale, bias, mean or variance is not a constant"
    gamma, beta, mean, var = values
    eps = float(attribute(node, "epsilon", 1e-5))
    problem = maths.statistics_problem(mean, var, eps)
    if problem is not None:
        raise FoldError(
            f"BatchNormalization '{node_name(node)}': {problem}; export the model from a checkpoint "
            "with valid running statistics"
        )
    scale, shift = maths.batchnorm_affine(mean.flatten(), var.flatten(), gamma.flatten(), beta.flatten(), eps)
    return ChannelAffine(module_name(node), BATCHNORM, [node], node.input[0], node.output[0], 1, scale, shift)


def mul_add(graph: Graph, mul: onnx.NodeProto) -> ChannelAffine | None:
    """The affine of ``Mul(layer(x), a)``, with the ``Add`` of ``b`` that follows it if any, for per-channel
    constants ``a`` and ``b``; None if not that."""
    if mul.op_type != "Mul" or len(mul.input) != 2 or mul.domain not in ("", "ai.onnx"):
        return None
    found = _constant_operand(graph, mul)
    layer = _weighted_layer(graph, found[0]) if found is not None else None
    geometry = _layer_geometry(graph, layer) if layer is not None else None
    if found is None or geometry is None:
        return None
    data, factor = found
    axis, rank, channels = geometry
    scale = maths.channel_vector(to_f64(factor), axis, rank, channels)
    if scale is None:
        return None
    nodes, shift = [mul], torch.zeros(channels, dtype=torch.float64)
    offset = _offset(graph, mul, geometry)
    if offset is not None:
        nodes, shift = [mul, offset[0]], offset[1]
    return ChannelAffine(module_name(mul), MUL_ADD, nodes, data, nodes[-1].output[0], axis, scale, shift)


def _offset(
    graph: Graph, mul: onnx.NodeProto, geometry: tuple[int, int, int]
) -> tuple[onnx.NodeProto, torch.Tensor] | None:
    """The ``Add`` of a per-channel constant that alone reads the output of ``mul``, and that constant."""
    readers = graph.readers(mul.output[0])
    if len(readers) != 1 or mul.output[0] in graph.outputs or readers[0][0].op_type != "Add":
        return None
    add = readers[0][0]
    found = _constant_operand(graph, add)
    if found is None or found[0] != mul.output[0] or add.domain not in ("", "ai.onnx"):
        return None
    shift = maths.channel_vector(to_f64(found[1]), *geometry)
    return None if shift is None else (add, shift)


def _constant_operand(graph: Graph, node: onnx.NodeProto) -> tuple[str, np.ndarray] | None:
    """(the other input, the constant) for a binary node with exactly one constant input."""
    if len(node.input) != 2:
        return None
    values = [graph.constant(name) for name in node.input]
    if (values[0] is None) == (values[1] is None):
        return None
    index = 0 if values[0] is None else 1
    constant = values[1 - index]
    if constant is None or not np.issubdtype(constant.dtype, np.floating):
        return None
    return node.input[index], constant


def _weighted_layer(graph: Graph, name: str) -> onnx.NodeProto | None:
    """The node computing ``name``, looking through a bias ``Add`` of a constant."""
    node = graph.producer.get(name)
    if node is not None and node.op_type == "Add":
        operand = _constant_operand(graph, node)
        node = graph.producer.get(operand[0]) if operand is not None else None
    return node


def _layer_geometry(graph: Graph, layer: onnx.NodeProto) -> tuple[int, int, int] | None:
    """(channel axis, output rank, channels) of a layer with a constant weight, else None."""
    if layer.op_type not in WEIGHTED or len(layer.input) < 2:
        return None
    weight = graph.constant(layer.input[1])
    if weight is None or weight.ndim < 2:
        return None
    if layer.op_type == "Conv":
        return 1, weight.ndim, weight.shape[0]
    if layer.op_type == "ConvTranspose":
        return 1, weight.ndim, weight.shape[1] * int(attribute(layer, "group", 1))
    if layer.op_type == "Gemm":
        return 1, 2, weight.shape[0 if attribute(layer, "transB", 0) else 1]
    rank = graph.rank(layer.output[0])
    if weight.ndim != 2 or rank is None or rank < 2:
        return None
    return rank - 1, rank, weight.shape[1]
