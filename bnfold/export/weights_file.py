"""The TorchScript exporter without its copies of the weights: the graph exported alone
(``export_params=False``), the tensors the exporter would have stored taken from the module as it hands
them over, and written once, straight from their memory, into one file beside the graph.

With ``export_params=True`` the exporter holds the weights three times over for a moment (its C++ message,
the serialised string and the Python bytes of it) and then parses them into a fourth: on ResNet-50 that
was the peak of ``convert`` (``benchmarks/PROFILE.md`` section 7). Here the graph's initializers point at
the file (by absolute path, as :func:`~bnfold.export.files.save` expects of an exporter's files) and the
weights are never serialised into a message at all.

The exporter's ONNX shape inference is given the stored values a shape can depend on, not the weights
(:func:`shape_inference_without_weights`).

The tensors are those of the exporter's own parameter dictionary, after its constant folding, which it
builds in ``_model_to_graph``: the only place they can be had is that function's result, so it is wrapped
for the duration of one export. Where the exporter is not laid out that way (another torch), or a stored
value is missing from what it handed over (or on a big-endian machine), :func:`export_with_weights_file`
returns None and the caller exports as usual.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch

from bnfold.export.files import PAGE, HashingWriter, WrittenWeights

EXPORTING = threading.Lock()
"""Held through one export with the exporter's functions wrapped, so that two threads never wrap and restore
them out of order (the TorchScript exporter runs one export at a time per process anyway)."""

INLINE_BYTES = 1024
"""Tensors smaller than this stay in the graph (as ``save`` leaves them): shapes, Clip bounds, scalars."""

Exported = tuple[onnx.ModelProto, list[str], tempfile.TemporaryDirectory[str], WrittenWeights]


def export_with_weights_file(
    module: torch.nn.Module, inputs: tuple[Any, ...], options: dict[str, Any], export: Any, within: Path | None = None
) -> Exported | None:
    """``export(module, inputs, target, options)`` (the quiet TorchScript export) without parameters; the
    model, the exporter's warnings, and the temporary folder (made in ``within``, by default the system's)
    holding the file of its weights. None where the exporter's parameters could not be had (see the module
    docstring).

    The file is laid out as :func:`~bnfold.export.save` lays out a ``.data`` file, and hashed as it is
    written: made beside the output, it can be moved into place instead of copied."""
    if sys.byteorder != "little":  # the tensors' bytes are written as they lie in memory; ONNX's are little-endian
        return None
    buffer = io.BytesIO()
    with EXPORTING, exporter_parameters() as parameters, shape_inference_without_weights():
        if parameters is None:
            return None
        said: list[str] = export(module, inputs, buffer, {**options, "export_params": False})
    model = onnx.ModelProto()
    with buffer.getbuffer() as view:
        model.ParseFromString(view)
    fed = set(options.get("input_names") or ())
    stored = [value for value in model.graph.input if value.name not in fed]
    if not all(_matches(value, parameters.get(value.name)) for value in stored):
        return None
    folder = tempfile.TemporaryDirectory(prefix=".bnfold-export-", dir=within)
    try:
        written = _store(model, stored, parameters, Path(folder.name).resolve() / "weights.bin")
    except BaseException:
        folder.cleanup()
        raise
    return model, said, folder, written


@contextlib.contextmanager
def exporter_parameters() -> Iterator[dict[str, torch.Tensor] | None]:
    """While one TorchScript export runs inside, the tensors it stores, by the names its graph gives them
    (filled once the exporter has built its graph). None when this torch's exporter is laid out otherwise."""
    try:
        from torch.onnx._internal.torchscript_exporter import utils
    except ImportError:
        yield None
        return
    stock = getattr(utils, "_model_to_graph", None)
    if stock is None:
        yield None
        return
    parameters: dict[str, torch.Tensor] = {}

    def model_to_graph(*args: Any, **kwargs: Any) -> Any:
        graph, named, outputs = stock(*args, **kwargs)
        parameters.update(named)
        return graph, named, outputs

    utils._model_to_graph = model_to_graph
    try:
        yield parameters
    finally:
        utils._model_to_graph = stock


SHAPE_VALUE_ELEMENTS = 1024
"""Floating tensors up to this size are given to the exporter's shape inference (a Resize's scales); larger
ones are weights, whose values no shape depends on."""


@contextlib.contextmanager
def shape_inference_without_weights() -> Iterator[None]:
    """While one TorchScript export runs inside, its ONNX shape inference sees the values of the stored
    tensors a shape can depend on (integer tensors, small floating ones), not the weights: it copies every
    value it is given into an ONNX message first, which on a model of 576 MB of weights took 2.6 s of a
    4.5 s export. The shapes and types of the weights come from the graph either way."""
    names = ("_jit_pass_onnx_graph_shape_type_inference", "_jit_pass_onnx_node_shape_type_inference")
    stock = {name: getattr(torch._C, name, None) for name in names}
    for name, function in stock.items():
        if function is not None:
            setattr(torch._C, name, _without_weights(function))
    try:
        yield
    finally:
        for name, function in stock.items():
            if function is not None:
                setattr(torch._C, name, function)


def _without_weights(function: Any) -> Any:
    def inference(target: Any, params: Any, *rest: Any) -> Any:
        if isinstance(params, dict):
            params = {k: v for k, v in params.items() if not _is_weight(v)}
        return function(target, params, *rest)

    return inference


def _is_weight(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > SHAPE_VALUE_ELEMENTS


def _matches(value: onnx.ValueInfoProto, tensor: torch.Tensor | None) -> bool:
    """Whether ``tensor`` is what the graph input ``value`` declares: its shape and its bytes per element."""
    if not isinstance(tensor, torch.Tensor):
        return False
    declared = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in declared.shape.dim]
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(declared.elem_type).itemsize
    except Exception:  # an element type numpy has no match for (4-bit, float8): export as usual
        return False
    return dims == list(tensor.shape) and itemsize == tensor.element_size()


def _store(
    model: onnx.ModelProto, stored: list[onnx.ValueInfoProto], parameters: dict[str, torch.Tensor], path: Path
) -> WrittenWeights:
    """Turn the graph inputs ``stored`` into initializers, their bytes written into ``path`` (small ones
    kept in the graph), in the order the exporter lists them."""
    names = {value.name for value in stored}
    digest = hashlib.sha256()
    with path.open("wb") as file, HashingWriter(file, digest) as out:
        for value in stored:
            tensor = onnx.TensorProto(name=value.name, data_type=value.type.tensor_type.elem_type)
            tensor.dims.extend(parameters[value.name].shape)
            _write(tensor, parameters[value.name], out, path)
            model.graph.initializer.append(tensor)
        size = out.tell()
    kept = [value for value in model.graph.input if value.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return WrittenWeights(path, digest, size)


def _write(tensor: onnx.TensorProto, value: torch.Tensor, out: HashingWriter, path: Path) -> None:
    """Fill ``tensor`` with the bytes of ``value`` (little-endian, as ONNX stores them): in the graph when
    small, else appended to ``out`` (writing ``path``) on a page boundary and pointed at."""
    data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    if data.nbytes < INLINE_BYTES:
        tensor.raw_data = data.tobytes()
        return
    out.write(b"\0" * (-out.tell() % PAGE))
    offset = out.tell()
    out.write(data.data)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, entry in (("location", str(path)), ("offset", str(offset)), ("length", str(data.nbytes))):
        item = tensor.external_data.add()
        item.key, item.value = key, entry
