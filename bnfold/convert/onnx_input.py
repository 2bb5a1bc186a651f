"""An ONNX input is checked before it is folded: its tensors hold the bytes their shapes need, its
BatchNormalization parameters agree in length, and onnxruntime can run it. A model that fails is the
user's to fix (a :class:`~bnfold.errors.LoadError` naming what is wrong), not a crash half-way."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from bnfold.errors import ConfigError, LoadError, one_line

if TYPE_CHECKING:
    from bnfold.convert.config import ConvertConfig
    from bnfold.load import LoadedModel


def check_onnx_input(model: onnx.ModelProto, path: Path | None) -> None:
    """Raise :class:`LoadError` when ``model`` (its external data loaded) cannot be folded or run."""
    where = str(path) if path else "the ONNX model"
    for tensor in _initializers(model.graph):
        problem = tensor_problem(tensor)
        if problem:
            raise LoadError(f"{where}: initializer {tensor.name!r} {problem}: the file is damaged; re-export it")
    for node in model.graph.node:
        problem = batchnorm_problem(node, model.graph)
        if problem:
            raise LoadError(f"{where}: BatchNormalization {node.name or node.output[0]!r} {problem}")
    _check_runs(path if path is not None else model.SerializeToString(), where)


def check_onnx_options(config: ConvertConfig, model: onnx.ModelProto) -> None:
    """The export options an ONNX input cannot take (it is folded as it is: its dimensions, names, opset and
    exporter stay): :class:`ConfigError` naming them, rather than ignoring them."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    given = [
        ("--dynamic", config.dynamic is not None),
        (f"--exporter {config.exporter}", config.exporter != "auto"),
        ("--input-names", bool(config.input_names)),
        ("--output-names", bool(config.output_names)),
        (f"--opset {config.opset} (the file has opset {opset})", config.opset not in (None, opset)),
    ]
    named = [option for option, present in given if present]
    if named:
        them = "it" if len(named) == 1 else "them"
        raise ConfigError(
            f"{', '.join(named)}: an ONNX input is folded as it is, with the dimensions, names, opset and exporter "
            f"it was written with; leave {them} out, or convert the PyTorch model"
        )


def check_loaded_onnx(*models: LoadedModel) -> None:
    """Every ONNX model among ``models`` is sound and runs in onnxruntime."""
    for model in models:
        if model.onnx_model is not None:
            check_onnx_input(model.onnx_model, model.path)


def _initializers(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    found = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                found += _initializers(sub)
    return found


def tensor_problem(tensor: onnx.TensorProto) -> str | None:
    """Why ``tensor``'s data does not fit its shape and type, or None."""
    if any(d < 0 for d in tensor.dims):
        return f"has a negative dimension {list(tensor.dims)}"
    count = math.prod(tensor.dims)
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except Exception:  # an element type numpy has no match for: not checked here
        return None
    if tensor.HasField("raw_data"):
        needed = count * dtype.itemsize if dtype.itemsize and tensor.data_type != onnx.TensorProto.STRING else None
        if needed is not None and len(tensor.raw_data) != needed and tensor.data_type not in _PACKED:
            return f"holds {len(tensor.raw_data)} bytes, its shape {list(tensor.dims)} needs {needed}"
        return None
    field = helper.tensor_dtype_to_field(tensor.data_type) if tensor.data_type != onnx.TensorProto.UNDEFINED else None
    if field is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    held = len(getattr(tensor, field))
    per_element = 2 if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
    if tensor.data_type not in _PACKED and held != count * per_element:
        return f"holds {held} values, its shape {list(tensor.dims)} needs {count}"
    return None


_PACKED = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}


def batchnorm_problem(node: onnx.NodeProto, graph: onnx.GraphProto) -> str | None:
    """Why a BatchNormalization's constant scale, bias, mean and variance cannot go together, or None."""
    if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx"):
        return None
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    names = ("scale", "B", "mean", "var")
    known = {name: shapes[i] for name, i in zip(names, node.input[1:5], strict=False) if i in shapes}
    lengths = {name: math.prod(dims) for name, dims in known.items()}
    bad = [name for name, dims in known.items() if len(dims) != 1]
    if bad:
        return f"has {bad[0]} of shape {known[bad[0]]}; its parameters must be 1-D, one value per channel"
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name} {n}" for name, n in lengths.items())
        return f"has parameters of different lengths ({detail}); each must hold one value per channel"
    return None


def _check_runs(model: Path | bytes, where: str) -> None:
    """onnxruntime creates a session from the model (optimizations off), or the run cannot go on. A
    bfloat16 model is tried as parity runs it on the CPU provider: widened to float32 (:mod:`~bnfold.verify.widen`)."""
    import onnxruntime as ort

    from bnfold.verify.widen import holds_bfloat16, widened

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        if holds_bfloat16(model):
            model = bytes(widened(model).SerializeToString())
        source = str(model) if isinstance(model, Path) else model
        ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own error types
        raise LoadError(f"{where}: onnxruntime cannot run it ({one_line(exc)})") from exc
