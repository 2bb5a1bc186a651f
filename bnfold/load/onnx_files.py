"""ONNX models: recognised by parsing, external data read from beside the file, input spec from the graph."""

from __future__ import annotations

import math
from pathlib import Path

import onnx
import torch
from google.protobuf.descriptor import FieldDescriptor
from onnx import TensorProto

from bnfold.errors import LoadError, one_line
from bnfold.load.inputs import InputSpec, make_inputs
from bnfold.load.limits import check_external_data
from bnfold.load.loaded import LoadedModel

_DTYPES: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.INT64: torch.int64,
    TensorProto.INT32: torch.int32,
    TensorProto.INT16: torch.int16,
    TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}


MAX_EXAMPLE_ELEMENTS = 1 << 28  # 1 GiB of float32: declared shapes beyond it are not taken at their word
_DTYPE_NAMES = {number: name for name, number in TensorProto.DataType.items()}


class NotOnnx(Exception):
    """The bytes are not an ONNX model; the message says why (for the caller's error)."""


def _first_tag_bytes() -> frozenset[int]:
    """First byte of every valid ModelProto field tag: a cheap test before parsing a whole file."""
    length_delimited = {FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES}
    tags = set()
    for field in onnx.ModelProto.DESCRIPTOR.fields:
        tag = (field.number << 3) | (2 if field.type in length_delimited else 0)
        tags.add(tag if tag < 0x80 else (tag & 0x7F) | 0x80)
    return frozenset(tags)


_MODEL_TAGS = _first_tag_bytes()


def parse_onnx(path: Path, head: bytes) -> onnx.ModelProto:
    """Parse ``path`` as an ONNX ModelProto (external data not yet read); :class:`NotOnnx` if it is not."""
    if not head or head[0] not in _MODEL_TAGS:
        raise NotOnnx("the first byte is not an ONNX protobuf field")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise NotOnnx(one_line(exc)) from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        raise NotOnnx("it parses as protobuf but holds no ONNX graph")
    return model


def read_onnx(path: Path, model: onnx.ModelProto) -> LoadedModel:
    """The parsed model with its external data loaded, and seeded example inputs when shapes are static."""
    _load_external_data(path, model)
    spec, notes, dynamic_batch = onnx_input_spec(model)
    example = make_inputs(spec, seed=0) if spec is not None else None
    return LoadedModel(
        format="onnx",
        module=None,
        example_inputs=example,
        dynamic_batch=dynamic_batch,
        notes=notes,
        onnx_model=model,
    )


def _load_external_data(path: Path, model: onnx.ModelProto) -> None:
    check_external_data(path, model)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # missing file, a location outside the model's directory, bad offsets
        raise LoadError(
            f"{path}: cannot read its external data ({one_line(exc)}): keep the data files the model "
            "names in the same directory as the .onnx file"
        ) from exc


def onnx_input_spec(model: onnx.ModelProto) -> tuple[InputSpec | None, list[str], bool]:
    """The graph inputs' shapes and dtypes, notes on what was assumed, and whether the batch is dynamic.

    A symbolic first dimension is taken as batch 1 (and said so); any other symbolic dimension leaves the
    spec unknown, so the user must give ``--input-shape``.
    """
    initializers = {init.name for init in model.graph.initializer}
    shapes, dtypes, notes, dynamic = [], [], [], False
    for value in model.graph.input:
        if value.name in initializers:
            continue
        shape, dtype, problem = _input_shape(value)
        if problem:
            return None, [f"input {value.name!r} {problem}: give --input-shape"], False
        if shape and shape[0] is None:
            dynamic = True
            notes.append(f"input {value.name!r} has a symbolic batch dimension; using batch 1")
            shape = (1, *shape[1:])
        shapes.append(tuple(int(d or 1) for d in shape))
        dtypes.append(dtype)
    return InputSpec(tuple(shapes), tuple(dtypes)), notes, dynamic


def _input_shape(value: onnx.ValueInfoProto) -> tuple[tuple[int | None, ...], torch.dtype, str]:
    """(dims with None for symbolic ones, dtype, problem) of one graph input; problem is "" when usable."""
    if not value.type.HasField("tensor_type"):
        return (), torch.float32, "is not a tensor"
    tensor = value.type.tensor_type
    dtype = _DTYPES.get(tensor.elem_type)
    if dtype is None:
        name = _DTYPE_NAMES.get(tensor.elem_type, f"#{tensor.elem_type}")
        return (), torch.float32, f"has element type {name}, which bnfold cannot feed"
    if not tensor.HasField("shape"):
        return (), dtype, "has no shape in the model"
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)
    if any(d is None for d in dims[1:]):
        symbolic = [d.dim_param or "?" for d in tensor.shape.dim if not d.HasField("dim_value")]
        return (), dtype, f"has symbolic dimensions ({', '.join(symbolic)})"
    if math.prod(d or 1 for d in dims) > MAX_EXAMPLE_ELEMENTS:
        return (), dtype, f"is declared {'x'.join(str(d or '?') for d in dims)}, too large for made-up inputs"
    return dims, dtype, ""
