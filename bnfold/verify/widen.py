"""bfloat16 ONNX models on onnxruntime's CPU provider, which has no bfloat16 Conv, Gemm or MatMul kernels.

:func:`widened` returns a copy of the model whose bfloat16 tensors are float32 holding the same values
(every bfloat16 value is exactly a float32): initializers, Constant values, graph inputs, outputs and
value types, and Cast targets, in subgraphs too. The copy computes the same graph in float32 arithmetic,
so a parity check on it covers the graph and its weights as written, not bfloat16 rounding of the
intermediate results (:data:`WIDENED_NOTE` says so in the report).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, numpy_helper

WIDENED_NOTE = (
    "onnxruntime's CPU provider has no bfloat16 kernels for Conv, Gemm or MatMul: the ONNX model ran on it "
    "with its bfloat16 tensors widened to float32 (the same values), which checks the graph and its weights "
    "but not bfloat16 arithmetic"
)
BF16, FLOAT = TensorProto.BFLOAT16, TensorProto.FLOAT


def holds_bfloat16(model: onnx.ModelProto | str | Path | bytes) -> bool:
    """Whether the model's graph inputs, outputs or initializers are bfloat16 (external weights are not
    read). A file that does not parse holds none: whatever runs it reports why it cannot."""
    try:
        proto = _proto(model, load_data=False)
    except (OSError, DecodeError):
        return False
    graph = proto.graph
    values = (*graph.input, *graph.output)
    return any(v.type.tensor_type.elem_type == BF16 for v in values) or any(
        t.data_type == BF16 for t in graph.initializer
    )


def widened(model: onnx.ModelProto | str | Path | bytes) -> onnx.ModelProto:
    """A copy of ``model`` with every bfloat16 tensor, value type and Cast target made float32."""
    proto = _proto(model, load_data=True)
    for graph in _graphs(proto.graph):
        _widen_graph(graph)
    return proto


def _proto(model: onnx.ModelProto | str | Path | bytes, load_data: bool) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return onnx.load(str(model), load_external_data=load_data)


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else attr.graphs:
                yield from _graphs(sub)


def _widen_graph(graph: onnx.GraphProto) -> None:
    for tensor in graph.initializer:
        _widen_tensor(tensor)
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.tensor_type.elem_type == BF16:
            value.type.tensor_type.elem_type = FLOAT
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                _widen_tensor(attr.t)
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == BF16:
                attr.i = FLOAT


def _widen_tensor(tensor: TensorProto) -> None:
    if tensor.data_type != BF16:
        return
    values = numpy_helper.to_array(tensor).astype(np.float32)
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
