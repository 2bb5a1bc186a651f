"""Freezing a BatchNormalization that cannot be folded into its per-channel affine ``y = x·s + t``.

Two forms, the same numbers as the BN in inference and no running statistics left in the model:

* "batchnorm": the BatchNormalization itself with scale s, bias t, mean 0, variance 1 and epsilon 0 —
  one per-channel kernel, the fastest form measured in ONNX Runtime;
* "muladd": Mul and Add with constants of shape [1, C, 1, ...] (rank of x), broadcasting over axis 1 —
  no BatchNormalization node left at all.

The output keeps the BN's name.
"""

from __future__ import annotations

import numpy as np
import onnx

from bnfold.fold.maths import channel_shape
from bnfold.fold.onnx._affine import ChannelAffine, to_numpy
from bnfold.fold.onnx._graph import Graph


def freeze(graph: Graph, affine: ChannelAffine, form: str = "batchnorm") -> str | None:
    """Freeze ``affine``'s BatchNormalization in ``form``; returns why it cannot, or None."""
    if form == "batchnorm":
        _as_batchnorm(graph, affine)
        return None
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


def _as_batchnorm(graph: Graph, affine: ChannelAffine) -> None:
    """Point the BatchNormalization at (s, t, 0, 1) with epsilon 0: exactly ``x·s + t``."""
    bn = affine.first
    scale = graph.constant(bn.input[1])
    dtype = scale.dtype if scale is not None else np.dtype(np.float32)
    values = (to_numpy(affine.scale, dtype), to_numpy(affine.shift, dtype))
    names = [
        graph.add_initializer(f"{affine.name}_{label}", value)
        for label, value in zip(
            ("scale", "shift", "mean", "var"), (*values, np.zeros_like(values[0]), np.ones_like(values[0])), strict=True
        )
    ]
    for slot, name in enumerate(names, start=1):
        graph.set_input(bn, slot, name)
    del bn.attribute[:]
    bn.attribute.append(onnx.helper.make_attribute("epsilon", 0.0))
