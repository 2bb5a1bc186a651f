"""Evaluating the small constant expressions exporters leave around parameters, in numpy.

Without constant folding the TorchScript exporter writes ``MatMul(x, Transpose(W))`` for a bias-free
``nn.Linear``, reshapes per-channel buffers with ``Reshape``/``Unsqueeze``, and a frozen BatchNorm computes
its scale as ``w * (rv + eps).rsqrt()`` in the graph. These are all exact in numpy (elementwise maths in
float64 and cast back, as onnxruntime would compute it in the tensor's own type up to rounding), so a fold
can treat their results as constants and write the folded value as a new initializer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx

from bnfold.fold.onnx._nodes import attribute

Args = Sequence[np.ndarray | None]

_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Pow": np.power,
}
_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Sqrt": np.sqrt,
    "Reciprocal": np.reciprocal,
    "Neg": np.negative,
}


def evaluable(node: onnx.NodeProto) -> bool:
    """Whether :func:`evaluate` knows ``node``'s op."""
    known = node.op_type in _BINARY or node.op_type in _UNARY or node.op_type in _SHAPING
    return known and node.domain in ("", "ai.onnx") and len(node.output) == 1


def evaluate(node: onnx.NodeProto, args: Args) -> np.ndarray | None:
    """The output of ``node`` on constant ``args``, or None when it is not a float/shape computation."""
    if node.op_type in _SHAPING:
        return _SHAPING[node.op_type](node, args)
    values = [a for a in args if a is not None]
    if not values or not all(np.issubdtype(v.dtype, np.floating) for v in values):
        return None
    dtype = np.result_type(*values)
    wide = [v.astype(np.float64) for v in values]
    if node.op_type in _UNARY and len(wide) == 1:
        return _UNARY[node.op_type](wide[0]).astype(dtype)
    if node.op_type in _BINARY and len(wide) == 2:
        return _BINARY[node.op_type](wide[0], wide[1]).astype(dtype)
    return None


def _axes(node: onnx.NodeProto, args: Args) -> list[int] | None:
    if len(args) > 1 and args[1] is not None:
        return [int(a) for a in args[1].reshape(-1)]
    axes = attribute(node, "axes")
    return None if axes is None else list(axes)


def _unsqueeze(node: onnx.NodeProto, args: Args) -> np.ndarray | None:
    axes, data = _axes(node, args), args[0]
    if axes is None or data is None:
        return None
    rank = data.ndim + len(axes)
    return np.expand_dims(data, tuple(sorted(a % rank for a in axes)))


def _squeeze(node: onnx.NodeProto, args: Args) -> np.ndarray | None:
    axes, data = _axes(node, args), args[0]
    if data is None:
        return None
    return np.squeeze(data) if axes is None else np.squeeze(data, tuple(a % data.ndim for a in axes))


def _reshape(node: onnx.NodeProto, args: Args) -> np.ndarray | None:
    data, shape = args[0], args[1] if len(args) > 1 else None
    if data is None or shape is None:
        return None
    dims = [int(d) for d in shape]
    if not attribute(node, "allowzero", 0):
        dims = [data.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return data.reshape(dims)


def _transpose(node: onnx.NodeProto, args: Args) -> np.ndarray | None:
    data = args[0]
    return None if data is None else np.transpose(data, attribute(node, "perm"))


def _flatten(node: onnx.NodeProto, args: Args) -> np.ndarray | None:
    data = args[0]
    if data is None:
        return None
    axis = int(attribute(node, "axis", 1)) % (data.ndim + 1) if data.ndim else 0
    return data.reshape(int(np.prod(data.shape[:axis])), -1)


def _cast(node: onnx.NodeProto, args: Args) -> np.ndarray | None:
    data = args[0]
    return None if data is None else data.astype(onnx.helper.tensor_dtype_to_np_dtype(attribute(node, "to")))


def _identity(node: onnx.NodeProto, args: Args) -> np.ndarray | None:
    return args[0]


_SHAPING: dict[str, Callable[[onnx.NodeProto, Args], np.ndarray | None]] = {
    "Identity": _identity,
    "Transpose": _transpose,
    "Reshape": _reshape,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Flatten": _flatten,
    "Cast": _cast,
}
