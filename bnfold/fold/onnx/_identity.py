"""Identity branch (RepVGG, MobileOne): ``Conv(x) + BN(x)`` becomes one Conv, the BN's ``s·x + t`` added to
its kernel as a centred one-hot tap (:func:`bnfold.fold.maths.absorb_identity`):

    W'[o, o mod C_in/g, centre] += s[o]        b'[o] += t[o]

Pattern: the affine's output is read only by an ``Add`` whose other operand is a sum (of ``Add`` nodes read
once) with a Conv among its terms that reads the affine's own input and whose output nothing else reads.
Check: the Conv maps C channels to C with stride 1 and a centred odd kernel with "same" padding, so that
its output has the input's shape and the one-hot tap reads x at the same position. Rewrite: the Conv's
weight and bias, then the ``Add`` and the affine are removed and the sum's value takes the Add's name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from bnfold.fold import maths
from bnfold.fold.onnx._affine import ChannelAffine, to_f64, to_numpy
from bnfold.fold.onnx._graph import Graph, attribute, label
from bnfold.fold.onnx._layers import check_groups, optional_constant, param_name
from bnfold.fold.onnx._names import module_name
from bnfold.fold.reasons import reason


@dataclass
class IdentityFold:
    """The identity branch ``affine`` absorbed by ``conv``; ``add`` sums it with ``rest``."""

    conv: onnx.NodeProto
    weight: np.ndarray
    bias: np.ndarray | None
    add: onnx.NodeProto
    rest: str

    def into(self) -> list[str]:
        return [module_name(self.conv)]

    def apply(self, graph: Graph, affine: ChannelAffine) -> None:
        groups = int(attribute(self.conv, "group", 1))
        bias = None if self.bias is None else to_f64(self.bias)
        w, b = maths.absorb_identity(to_f64(self.weight), bias, affine.scale, affine.shift, groups)
        graph.write_param(self.conv, 1, to_numpy(w, self.weight.dtype), param_name(self.conv, 1, "weight"))
        dtype = self.weight.dtype if self.bias is None else self.bias.dtype
        graph.write_param(self.conv, 2, to_numpy(b, dtype), param_name(self.conv, 2, "bias"))
        total = self.add.output[0]
        graph.remove(self.add)
        for node in affine.nodes:
            graph.remove(node)
        producer = graph.producer[self.rest]
        graph.set_output(producer, list(producer.output).index(self.rest), total)


def identity_fold(graph: Graph, affine: ChannelAffine) -> IdentityFold | str | None:
    """The identity fold of ``affine``, why it does not fold as one, or None when it is no identity branch."""
    readers = graph.readers(affine.output)
    if affine.axis != 1 or len(readers) != 1 or affine.output in graph.outputs:
        return None
    add, slot = readers[0]
    if add.op_type != "Add" or len(add.input) != 2 or add.domain not in ("", "ai.onnx"):
        return None
    rest = add.input[1 - slot]
    convs = [node for node in _terms(graph, rest, add) if _reads_input(graph, node, affine.input)]
    if not convs:
        return None  # no Conv beside it reads the same input: not an identity branch
    if graph.exclusive(rest, (add, 1 - slot)) is not None or graph.producer.get(rest) is None:
        return None
    reasons = []
    for conv in convs:
        found = _check(graph, conv, affine)
        if not isinstance(found, str):
            weight, bias = found
            return IdentityFold(conv, weight, bias, add, rest)
        reasons.append(found)
    return reason("identity", problems="; ".join(reasons))


def _terms(graph: Graph, value: str, reader: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The producers of the terms of the sum ``value`` (Adds read once, by the sum, are opened)."""
    node = graph.producer.get(value)
    if node is None or len(graph.readers(value)) != 1 or value in graph.outputs:
        return []
    if node.op_type == "Add" and len(node.input) == 2 and node.domain in ("", "ai.onnx"):
        return [term for name in node.input for term in _terms(graph, name, node)]
    return [node]


def _reads_input(graph: Graph, node: onnx.NodeProto, value: str) -> bool:
    return node.op_type == "Conv" and node.domain in ("", "ai.onnx") and node.input[0] == value


Checked = tuple[np.ndarray, np.ndarray | None]


def _check(graph: Graph, conv: onnx.NodeProto, affine: ChannelAffine) -> Checked | str:
    """(weight, bias) of a Conv that can absorb the identity branch, or why it cannot."""
    weight, missing = optional_constant(graph, conv, 1)
    bias, bias_reason = optional_constant(graph, conv, 2)
    if weight is None or bias_reason:
        return bias_reason or missing or f"{label(conv)} has no weight"
    check_groups(conv, weight)
    groups, channels = int(attribute(conv, "group", 1)), affine.channels
    stride = _stride_problem(conv)
    if stride is not None:
        return stride
    if weight.shape[0] != channels or weight.shape[1] * groups != channels:
        return f"{module_name(conv)} does not map {channels} channels to {channels}"
    if not _same_padding(conv, weight):
        return f"{module_name(conv)} is not a centred odd kernel with 'same' padding"
    return weight, bias


def _stride_problem(conv: onnx.NodeProto) -> str | None:
    strides = [int(s) for s in attribute(conv, "strides", [])]
    return None if all(s == 1 for s in strides) else f"{module_name(conv)} has stride {strides}"


def _same_padding(conv: onnx.NodeProto, weight: np.ndarray) -> bool:
    kernel = list(weight.shape[2:])
    if any(k % 2 == 0 for k in kernel):
        return False
    auto_pad = attribute(conv, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return True
    if auto_pad == "VALID":
        return all(k == 1 for k in kernel)
    dilations = [int(d) for d in attribute(conv, "dilations", [1] * len(kernel))]
    pads = [int(p) for p in attribute(conv, "pads", [0] * 2 * len(kernel))]
    same = [d * (k - 1) // 2 for d, k in zip(dilations, kernel, strict=True)]
    return pads == same + same
