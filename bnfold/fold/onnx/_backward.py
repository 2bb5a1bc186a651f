"""Backward fold: push ``y = s·x + t`` into every layer that reads y (formulas of
:func:`bnfold.fold.maths.fold_into_consumer`, over the input channels i and kernel taps k a layer reads):

    W'[o, i, k] = W[o, i, k]·s[i]        b'[o] = b[o] + Σ_{i,k} W[o, i, k]·t[i]

Pattern: y is read only by Conv (data input, channels on axis 1), Gemm (A, transA=0, channels on axis 1)
or MatMul (X, channels on X's last axis, which MatMul contracts), each with a constant weight, directly or
through a ``Pad`` that copies values (reflect, edge, wrap: these commute with a per-channel affine). Check:
no zero padding on a Conv and no constant-mode Pad (a padded border would see 0, not t, so the bias would
be wrong there), no Pad along the channel axis, y is no graph output, the channel counts agree. Rewrite:
every consumer, then the readers of y (consumers or Pads) read x instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch

from bnfold.fold import maths
from bnfold.fold.onnx._affine import ChannelAffine, to_f64, to_numpy
from bnfold.fold.onnx._graph import Graph, attribute, label, set_attribute
from bnfold.fold.onnx._layers import append_bias, check_groups, gemm_bias, optional_constant, param_name
from bnfold.fold.onnx._names import module_name
from bnfold.fold.reasons import reason


@dataclass
class ConsumerFold:
    """One layer reading the affine's output, checked and ready to absorb it."""

    node: onnx.NodeProto
    weight: np.ndarray
    bias: np.ndarray | None

    def apply(self, graph: Graph, scale: torch.Tensor, shift: torch.Tensor) -> None:
        op = self.node.op_type
        groups = int(attribute(self.node, "group", 1))
        out_major = op == "Conv" or (op == "Gemm" and attribute(self.node, "transB", 0))
        rows = self.weight if out_major else self.weight.T
        bias = to_f64(self.bias) if op == "Conv" and self.bias is not None else None
        w, b = maths.fold_into_consumer(to_f64(rows), bias, scale, shift, groups)
        w = w if out_major else w.T
        graph.write_param(self.node, 1, to_numpy(w, self.weight.dtype), param_name(self.node, 1, "weight"))
        if op == "Conv":
            dtype = self.weight.dtype if self.bias is None else self.bias.dtype
            graph.write_param(self.node, 2, to_numpy(b, dtype), param_name(self.node, 2, "bias"))
        elif op == "MatMul":
            append_bias(graph, self.node, to_numpy(b, self.weight.dtype))
        else:
            self._gemm_bias(graph, b)

    def _gemm_bias(self, graph: Graph, contribution: torch.Tensor) -> None:
        alpha = float(attribute(self.node, "alpha", 1.0))
        c = gemm_bias(self.node, self.bias, contribution.numel()) + alpha * contribution
        c = c.reshape(-1) if c.shape[0] == 1 else c
        dtype = self.weight.dtype if self.bias is None else self.bias.dtype
        graph.write_param(self.node, 2, to_numpy(c, dtype), param_name(self.node, 2, "bias"))
        set_attribute(self.node, "beta", 1.0)


COPYING_PADS = ("reflect", "edge", "wrap")


def backward_folds(graph: Graph, affine: ChannelAffine) -> list[ConsumerFold] | str:
    """The folds of ``affine`` into every reader of its output, or why it cannot go there."""
    return _folds_from(graph, affine.output, affine)


def _folds_from(graph: Graph, value: str, affine: ChannelAffine) -> list[ConsumerFold] | str:
    if value in graph.outputs:
        return reason("model_output")
    folds: list[ConsumerFold] = []
    for node, slot in graph.readers(value):
        fold = (
            _through_pad(graph, node, slot, affine) if node.op_type == "Pad" else _consumer(graph, node, slot, affine)
        )
        if isinstance(fold, str):
            return fold
        folds.extend(fold if isinstance(fold, list) else [fold])
    return folds


def _through_pad(graph: Graph, pad: onnx.NodeProto, slot: int, affine: ChannelAffine) -> list[ConsumerFold] | str:
    """The consumers behind a Pad that copies border values and leaves the channel axis alone."""
    mode = attribute(pad, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if pad.domain not in ("", "ai.onnx") or slot != 0:
        return reason("not_a_layer", node=label(pad))
    if mode not in COPYING_PADS:
        return reason("pad_values", pad=label(pad), mode=mode)
    amounts = graph.constant(pad.input[1]) if len(pad.input) > 1 and pad.input[1] else None
    axes = graph.constant(pad.input[3]) if len(pad.input) > 3 and pad.input[3] else None
    rank = graph.rank(pad.input[0])
    if amounts is None or rank is None or (len(pad.input) > 3 and pad.input[3] and axes is None):
        return f"the pads of {label(pad)} are not constant"
    padded = [int(a) % rank for a in axes] if axes is not None else list(range(rank))
    half = len(padded)
    if affine.axis in padded and (amounts[padded.index(affine.axis)] or amounts[half + padded.index(affine.axis)]):
        return reason("pad_channels", pad=label(pad))
    return _folds_from(graph, pad.output[0], affine)


def _consumer(graph: Graph, node: onnx.NodeProto, slot: int, affine: ChannelAffine) -> ConsumerFold | str:
    if node.op_type == "ConvTranspose" and node.domain in ("", "ai.onnx"):
        return reason("transposed_consumer", layer=module_name(node))
    if node.op_type not in ("Conv", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
        return reason("not_a_layer", node=label(node))
    if slot != 0:
        return f"its output is not the data input of {label(node)}"
    weight, missing = optional_constant(graph, node, 1)
    bias, bias_reason = optional_constant(graph, node, 2)
    if weight is None or bias_reason:
        return bias_reason or missing or f"{label(node)} has no weight"
    check_groups(node, weight)
    problem = _geometry_problem(graph, node, weight, affine)
    return ConsumerFold(node, weight, bias) if problem is None else problem


def _geometry_problem(graph: Graph, node: onnx.NodeProto, weight: np.ndarray, affine: ChannelAffine) -> str | None:
    if node.op_type == "Conv":
        if affine.axis != 1:
            return f"{label(node)} reads its channels on axis 1, not on axis {affine.axis}"
        if _pads(node, weight):
            return reason("zero_padding", layer=module_name(node), padding=_padding(node))
        reads = weight.shape[1] * int(attribute(node, "group", 1))
    elif node.op_type == "Gemm":
        if attribute(node, "transA", 0) or affine.axis != 1:
            return f"{label(node)} does not contract the affine's channel axis"
        reads = weight.shape[1 if attribute(node, "transB", 0) else 0]
    else:
        rank = graph.rank(node.input[0])
        if weight.ndim != 2 or rank is None or affine.axis != rank - 1:
            return f"{label(node)} does not contract the affine's channel axis with a constant 2-D weight"
        reads = weight.shape[0]
    if reads != affine.channels:
        return f"{label(node)} reads {reads} channels, the affine has {affine.channels}"
    return None


def _padding(node: onnx.NodeProto) -> str:
    auto_pad = attribute(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    return f"auto_pad={auto_pad}" if auto_pad != "NOTSET" else f"pads={list(attribute(node, 'pads', []))}"


def _pads(node: onnx.NodeProto, weight: np.ndarray) -> bool:
    """Whether ``node`` pads its input with zeros."""
    auto_pad = attribute(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return any(k != 1 for k in weight.shape[2:])
    return any(int(p) != 0 for p in attribute(node, "pads", []))


def into_names(folds: list[ConsumerFold]) -> list[str]:
    return list(dict.fromkeys(module_name(fold.node) for fold in folds))
