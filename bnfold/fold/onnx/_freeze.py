"""Freezing a BatchNormalization that cannot be folded into its per-channel affine:

    y = x·s + t,   s and t constants of shape [1, C, 1, ...] (rank of x), so they broadcast over axis 1

Same numbers as the BN in inference, two elementwise nodes any runtime fuses or runs cheaply, and no
running statistics left in the model. The output keeps the BN's name.
"""

from __future__ import annotations

import numpy as np
import onnx

from bnfold.fold.onnx._affine import ChannelAffine, channel_shape, to_numpy
from bnfold.fold.onnx._graph import Graph


def freeze(graph: Graph, affine: ChannelAffine) -> str | None:
    """Replace ``affine``'s BatchNormalization by Mul and Add; returns why it cannot, or None."""
    known = graph.types.get(affine.input)
    if known is None or known.rank is None:
        return f"the rank of its input '{affine.input}' is unknown, so a frozen affine cannot be shaped"
    dtype = _dtype(known.elem_type, graph, affine)
    shape = channel_shape(0, affine.axis, known.rank, affine.channels)
    bn = affine.first
    scale = graph.add_initializer(f"{affine.name}_scale", to_numpy(affine.scale, dtype).reshape(shape))
    shift = graph.add_initializer(f"{affine.name}_shift", to_numpy(affine.shift, dtype).reshape(shape))
    scaled = graph.fresh(f"{affine.output}_scaled")
    mul_name, add_name = graph.fresh(f"{affine.name}_mul"), graph.fresh(f"{affine.name}_add")
    mul = onnx.helper.make_node("Mul", [affine.input, scale], [scaled], name=mul_name)
    add = onnx.helper.make_node("Add", [scaled, shift], [affine.output], name=add_name)
    graph.insert(mul, at=bn)
    graph.remove(bn)
    graph.insert(add, at=mul)
    return None


def _dtype(elem_type: int, graph: Graph, affine: ChannelAffine) -> np.dtype:
    if elem_type != onnx.TensorProto.UNDEFINED:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    scale = graph.constant(affine.first.input[1])
    return scale.dtype if scale is not None else np.dtype(np.float32)
