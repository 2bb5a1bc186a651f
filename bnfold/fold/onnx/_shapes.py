"""Shape inference and the checker on a *skeleton*: the model with its large initializers declared as typed
graph inputs instead of carrying their data. That keeps both fast (neither serialises the weights) and lets
them run on models over the 2 GB protobuf limit (whose initializers were loaded from external data), where
``check_model`` and ``infer_shapes`` refuse the full proto. The initializers a fold writes come from
``numpy_helper.from_array`` and need no checking of their own.
"""

from __future__ import annotations

import onnx

from bnfold.fold.onnx._graph import ValueType

SMALL = 1024  # initializers up to this many elements stay: shape inference may need their values


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without the data of its large initializers, nor of those kept in a file (each
    declared as a graph input instead)."""
    source = model.graph
    skel = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name)
    skel.opset_import.extend(model.opset_import)
    skel.functions.extend(model.functions)
    graph = skel.graph
    graph.name = source.name
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    graph.sparse_initializer.extend(source.sparse_initializer)
    declared = {v.name for v in source.input}
    for tensor in source.initializer:
        if _elements(tensor) <= SMALL and tensor.data_location != onnx.TensorProto.EXTERNAL:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return skel


def _elements(tensor: onnx.TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count


def infer_types(model: onnx.ModelProto) -> tuple[dict[str, ValueType], bool]:
    """Element type, rank and dimensions of every value shape inference can type, and whether strict
    inference passed. The values of shape computations are propagated (``data_prop``): a Reshape whose
    shape is computed from another value's gets its dimensions."""
    skel = skeleton(model)
    inferred, strict = None, True
    for options in ({"strict_mode": True, "data_prop": True}, {"strict_mode": True}):
        try:
            inferred = onnx.shape_inference.infer_shapes(skel, **options)
            break
        except Exception:  # noqa: BLE001, PERF203 - the model's own problem; fall back to what can be inferred
            continue
    if inferred is None:
        inferred = onnx.shape_inference.infer_shapes(skel, strict_mode=False)
        strict = False
    types = {t.name: ValueType(t.data_type, len(t.dims), tuple(t.dims)) for t in model.graph.initializer}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = info.type.tensor_type
        if info.type.HasField("tensor_type"):
            dims = tuple(_dim(d) for d in tensor.shape.dim) if tensor.HasField("shape") else None
            types[info.name] = ValueType(tensor.elem_type, None if dims is None else len(dims), dims)
    return types, strict


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    return str(dim.dim_param) if dim.HasField("dim_param") else None


def check_folded(folded: onnx.ModelProto, original: onnx.ModelProto, strict_inference: bool) -> None:
    """Run the ONNX checker and shape inference on the folded model.

    A failure that the original model shares is the model's own and is let through; a new one is a bug in
    the fold and raises ``RuntimeError`` (not a user error: it keeps its traceback).
    """
    try:
        _check(folded)
    except onnx.checker.ValidationError as exc:
        try:
            _check(original)
        except onnx.checker.ValidationError:
            return
        raise RuntimeError(f"folding produced an invalid ONNX model: {exc}") from exc
    if strict_inference:
        try:
            onnx.shape_inference.infer_shapes(skeleton(folded), strict_mode=True)
        except Exception as exc:
            raise RuntimeError(f"shape inference fails on the folded model: {exc}") from exc


def _check(model: onnx.ModelProto) -> None:
    """The checker on the skeleton: the graph's structure, types and opsets, without serialising weights."""
    onnx.checker.check_model(skeleton(model))
