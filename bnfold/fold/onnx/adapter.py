"""The fold rules' graph interface (:class:`bnfold.fold.rules.graph.FoldGraph`) over an ONNX graph: a value is
a name, its producer and readers come from the :class:`~bnfold.fold.onnx._graph.Graph` index, constants are
initializers and ``Constant`` nodes (never an initializer the caller can feed), and the layers are Conv,
ConvTranspose, Gemm and MatMul with constant weights.

Gemm ``Y = α·op(A)·op(B) + β·C`` and MatMul ``Y = X·W`` show the rules their weight with the output channels
on axis 0 (B or Bᵀ, Wᵀ) and their bias as added (β·C); a written Gemm bias sets β to 1, and a MatMul, which
has no bias input, gets an ``Add`` after it for a bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import onnx
import torch

from bnfold.fold.onnx import _moves as moves
from bnfold.fold.onnx._affine import MUL_ADD, ChannelAffine, to_f64, to_numpy
from bnfold.fold.onnx._freeze import freeze
from bnfold.fold.onnx._graph import Graph, Use, attribute, label, set_attribute
from bnfold.fold.onnx._layers import append_bias, check_groups, gemm_bias, optional_constant, param_name
from bnfold.fold.onnx._names import module_name
from bnfold.fold.reasons import reason
from bnfold.fold.rules.graph import Affine, LayerKind, Pads, PadView, PassThrough

LAYERS: dict[str, LayerKind] = {"Conv": "conv", "ConvTranspose": "conv_transpose", "Gemm": "linear", "MatMul": "linear"}
PASSES: dict[str, PassThrough] = {"Add": "add", "Concat": "concat"}
COPYING_PADS = ("reflect", "edge", "wrap")


def _standard(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def _auto_pad(node: onnx.NodeProto) -> str:
    auto_pad = attribute(node, "auto_pad", b"NOTSET")
    return auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)


@dataclass
class OnnxLayer:
    """A Conv, ConvTranspose, Gemm or MatMul node with constant weights."""

    graph: Graph
    node: onnx.NodeProto
    stored_weight: np.ndarray
    stored_bias: np.ndarray | None

    @property
    def kind(self) -> LayerKind:
        return LAYERS[self.node.op_type]

    @property
    def name(self) -> str:
        layers = {id(user) for user, _ in self.graph.readers(self.node.input[1]) if user.op_type in LAYERS}
        return module_name(self.node, shared_weight=len(layers) > 1)

    @property
    def groups(self) -> int:
        return int(attribute(self.node, "group", 1)) if self.kind != "linear" else 1

    @property
    def trans_b(self) -> bool:
        return bool(attribute(self.node, "transB", 0))

    @property
    def channels(self) -> int:
        shape = self.stored_weight.shape
        if self.kind == "conv_transpose":
            return int(shape[1] * self.groups)
        if self.node.op_type == "Gemm":
            return int(shape[0 if self.trans_b else 1])
        return int(shape[1] if self.node.op_type == "MatMul" else shape[0])

    @property
    def channel_axis(self) -> int | None:
        if self.node.op_type != "MatMul":
            return 1
        rank = self.graph.rank(self.node.output[0])
        return None if rank is None else rank - 1

    @property
    def channels_last(self) -> bool:
        return self.node.op_type == "MatMul"

    @property
    def input_channel_axis(self) -> int | None:
        if self.node.op_type == "Gemm":
            return None if attribute(self.node, "transA", 0) else 1
        if self.node.op_type != "MatMul":
            return 1
        rank = self.graph.rank(self.node.input[0])
        return None if rank is None else rank - 1

    @property
    def weight_scale(self) -> float:
        return float(attribute(self.node, "alpha", 1.0)) if self.node.op_type == "Gemm" else 1.0

    @property
    def weight_shape(self) -> tuple[int, ...]:
        shape = tuple(int(d) for d in self.stored_weight.shape)
        return shape[::-1] if self._rows_transposed else shape

    @property
    def strides(self) -> list[int]:
        return [int(s) for s in attribute(self.node, "strides", [1] * self._spatial)]

    @property
    def dilations(self) -> list[int]:
        return [int(d) for d in attribute(self.node, "dilations", [1] * self._spatial)]

    @property
    def pads(self) -> Pads:
        auto_pad = _auto_pad(self.node)
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            return "same"
        if auto_pad == "VALID":
            return "valid"
        return [int(p) for p in attribute(self.node, "pads", [0] * 2 * self._spatial)]

    @property
    def padding_text(self) -> str:
        auto_pad = _auto_pad(self.node)
        return f"auto_pad={auto_pad}" if auto_pad != "NOTSET" else f"pads={list(attribute(self.node, 'pads', []))}"

    @property
    def _spatial(self) -> int:
        return max(self.stored_weight.ndim - 2, 0) if self.kind != "linear" else 0

    @property
    def _rows_transposed(self) -> bool:
        """Whether the stored weight holds the output channels on axis 1 (MatMul's W, Gemm's B without transB)."""
        return self.node.op_type == "MatMul" or (self.node.op_type == "Gemm" and not self.trans_b)

    def weight(self) -> torch.Tensor:
        return to_f64(self.stored_weight.T if self._rows_transposed else self.stored_weight)

    def bias(self) -> torch.Tensor | None:
        if self.stored_bias is None or self.node.op_type == "MatMul":
            return None
        if self.node.op_type == "Gemm":
            return gemm_bias(self.node, self.stored_bias, self.channels)
        return to_f64(self.stored_bias)

    def write(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        node, dtype = self.node, self.stored_weight.dtype
        stored = weight.T if self._rows_transposed else weight
        self.graph.write_param(node, 1, to_numpy(stored, dtype), param_name(node, 1, "weight"))
        if bias is None:
            return
        bias_dtype = dtype if self.stored_bias is None else self.stored_bias.dtype
        if node.op_type == "MatMul":
            append_bias(self.graph, node, to_numpy(bias, dtype))
            return
        if node.op_type == "Gemm":
            bias = bias.reshape(-1) if bias.dim() == 2 and bias.shape[0] == 1 else bias
            set_attribute(node, "beta", 1.0)
        self.graph.write_param(node, 2, to_numpy(bias, bias_dtype), param_name(node, 2, "bias"))


class OnnxGraph:
    """An indexed ONNX graph seen through the fold rules' interface."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def producer(self, value: str) -> onnx.NodeProto | None:
        return self.graph.producer.get(value)

    def output(self, node: onnx.NodeProto) -> str:
        return str(node.output[0])

    def inputs(self, node: onnx.NodeProto) -> list[str]:
        return list(node.input)

    def pass_through(self, node: onnx.NodeProto) -> PassThrough | None:
        if not _standard(node):
            return None
        return "move" if moves.is_move(node) else PASSES.get(node.op_type)

    def layer_kind(self, node: onnx.NodeProto) -> LayerKind | None:
        return LAYERS.get(node.op_type) if _standard(node) else None

    def layer_input(self, node: onnx.NodeProto) -> str:
        return str(node.input[0])

    def readers(self, value: str) -> list[Use]:
        return self.graph.value_readers(value)

    def is_output(self, value: str) -> bool:
        return value in self.graph.outputs

    def layer(self, node: onnx.NodeProto) -> OnnxLayer | str:
        weight, missing = optional_constant(self.graph, node, 1)
        bias, bias_reason = optional_constant(self.graph, node, 2)
        if weight is None:
            return missing or f"{label(node)} has no weight"
        check_groups(node, weight)
        if bias_reason or not np.issubdtype(weight.dtype, np.floating):
            return bias_reason or f"weight of {label(node)} is not floating point"
        rank = self.graph.rank(node.output[0])
        if node.op_type == "MatMul" and (weight.ndim != 2 or rank is None or rank < 2):
            return f"{label(node)} needs a constant 2-D weight and an input of known rank >= 2"
        return OnnxLayer(self.graph, node, weight, bias)

    def rank(self, value: str) -> int | None:
        return self.graph.rank(value)

    def constant(self, value: str) -> torch.Tensor | None:
        found = self.graph.constant(value)
        return None if found is None else to_f64(found)

    def concat_axis(self, node: onnx.NodeProto) -> int:
        return int(attribute(node, "axis", 0))

    def source_axis(self, node: onnx.NodeProto, axis: int) -> int | str:
        return moves.source_axis(self.graph, node, axis)

    def target_axis(self, node: onnx.NodeProto, axis: int) -> int | str:
        return moves.target_axis(self.graph, node, axis)

    def pad(self, node: onnx.NodeProto) -> PadView | None:
        if node.op_type != "Pad" or not _standard(node):
            return None
        mode = attribute(node, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        inputs = list(node.input) + [""] * 4
        amounts = self.graph.constant(inputs[1]) if inputs[1] else None
        axes = self.graph.constant(inputs[3]) if inputs[3] else None
        rank = self.graph.rank(inputs[0])
        if amounts is None or rank is None or (inputs[3] and axes is None):
            return PadView(mode, mode in COPYING_PADS, None)
        padded = [int(a) % rank for a in axes] if axes is not None else list(range(rank))
        half = len(padded)
        moved = [axis for i, axis in enumerate(padded) if amounts[i] or amounts[half + i]]
        return PadView(mode, mode in COPYING_PADS, moved)

    def exclusive(self, value: str, use: Use) -> str | None:
        return self.graph.exclusive(value, use)

    def no_weights(self, value: str, what: str) -> str:
        source = self.graph.producer.get(value)
        if value in self.graph.initializers:
            return reason("no_weights", what=what, source=f"the constant '{value}'")
        if source is None:
            return reason("no_weights", what=what, source=f"the model input '{value}'")
        return reason("no_weights", what=what, source=label(source))

    def label(self, node: onnx.NodeProto) -> str:
        return label(node)

    def name(self, node: onnx.NodeProto) -> str:
        return module_name(node)

    def write_param(self, node: onnx.NodeProto, slot: int, value: torch.Tensor) -> None:
        name = node.input[slot]
        old = self.graph.constant(name)
        dtype = old.dtype if old is not None else np.dtype(np.float32)
        self.graph.write_param(node, slot, to_numpy(value, dtype), f"{name}_folded")

    def bypass(self, affine: Affine[onnx.NodeProto, str]) -> None:
        self.remove(affine)
        self._rename(affine.input, affine.output)

    def reroute(self, affine: Affine[onnx.NodeProto, str]) -> None:
        for node, slot in self.graph.readers(affine.output):
            self.graph.set_input(node, slot, affine.input)
        self.remove(affine)

    def bypass_node(self, node: onnx.NodeProto, value: str) -> None:
        total = node.output[0]
        self.graph.remove(node)
        self._rename(value, total)

    def remove(self, affine: Affine[onnx.NodeProto, str]) -> None:
        for node in cast(ChannelAffine, affine).nodes:
            self.graph.remove(node)

    def freeze(self, affine: Affine[onnx.NodeProto, str], form: str) -> str | None:
        found = cast(ChannelAffine, affine)
        return None if found.kind == MUL_ADD else freeze(self.graph, found, form)

    def _rename(self, value: str, name: str) -> None:
        """The node computing ``value`` computes it under ``name`` (the name the removed nodes' readers read)."""
        producer = self.graph.producer[value]
        self.graph.set_output(producer, list(producer.output).index(value), name)
