"""The TorchScript exporter: a folded GraphModule of aten ops exported with its node names and symbolic
dimensions, a model past protobuf's 2 GB written through a file."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import fx, nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int
from torch.utils import _pytree as pytree

from bnfold.errors import ExportError, one_line
from bnfold.export.cleanup import tidy
from bnfold.export.files import external_data_limit, point_at_files
from bnfold.export.result import DEFAULT_OPSET, TORCHSCRIPT, TORCHSCRIPT_MAX_OPSET, ExportResult, quiet
from bnfold.export.weights_file import export_with_weights_file
from bnfold.fold.onnx._shapes import skeleton


def export_torchscript(
    module: fx.GraphModule, inputs: tuple[Any, ...], *, opset: int | None = None, weights_file: bool | Path = False
) -> ExportResult:
    """Export a GraphModule of aten ops with the TorchScript exporter.

    Inputs and outputs keep the graph's node names, as the dynamo exporter names them; every dimension
    torch.export kept symbolic is dynamic (dimension 0 of the inputs named "batch"), the others fixed.

    With ``weights_file``, the weights are written once from the module's tensors into a temporary file
    (``ExportResult.files``) that the model's initializers point at, never into the model: no copy of them
    in memory (:mod:`.weights_file`); :func:`~bnfold.export.save` copies them beside the output, or moves
    the file there when nothing changed them and it is on the same file system (a ``weights_file`` folder
    beside the output: the temporary folder is made in it).
    """
    opset = opset or DEFAULT_OPSET
    if opset > TORCHSCRIPT_MAX_OPSET:
        raise ExportError(f"the TorchScript exporter stops at opset {TORCHSCRIPT_MAX_OPSET}, {opset} was asked for")
    placeholders = [node for node in module.graph.nodes if node.op == "placeholder"]
    outputs = pytree.tree_leaves(next(n for n in reversed(module.graph.nodes) if n.op == "output").args[0])
    if not all(isinstance(o, fx.Node) and o.op != "placeholder" for o in outputs) or len(set(outputs)) < len(outputs):
        raise ExportError("the TorchScript exporter cannot name outputs that are inputs, constants or repeated")
    computed = _computes_with_symbolic_sizes(module)
    if computed is not None:
        raise ExportError(
            f"{computed.name} takes a size computed from a dynamic dimension, which the TorchScript exporter "
            "would write as the example's size"
        )
    names_in, names_out = [_input_name(n) for n in placeholders], [n.name for n in outputs]
    dynamic = _dynamic_axis_names(placeholders, outputs)
    options = dict(opset_version=opset, input_names=names_in, output_names=names_out, dynamic_axes=dynamic or None)
    if weights_file is not False:
        within = weights_file if isinstance(weights_file, Path) else None
        exported = export_with_weights_file(module, inputs, options, _torchscript_export, within)
        if exported is not None:
            return _checked(ExportResult(tidy(exported[0], exported[3]), TORCHSCRIPT, opset, *exported[1:]))
    proto, said, kept = _exported(module, inputs, options, keep_files=True)
    return _checked(ExportResult(tidy(proto), TORCHSCRIPT, opset, said, kept))


def _checked(result: ExportResult) -> ExportResult:
    """``result`` once its graph passes onnx.checker (on its skeleton: no weight is serialised), else an
    ExportError, its files removed: the TorchScript exporter writes some graphs the ONNX schema does not
    allow (a batch-statistics BatchNormalization that is a model output gets five outputs), and
    ``export_folded``'s "auto" then takes the dynamo exporter."""
    try:
        onnx.checker.check_model(skeleton(result.model))
    except onnx.checker.ValidationError as exc:
        result.release_files()
        raise ExportError(f"the TorchScript exporter wrote a model onnx.checker refuses: {one_line(exc)}") from exc
    return result


def run_torchscript_exporter(
    module: nn.Module, inputs: tuple[Any, ...], **options: Any
) -> tuple[onnx.ModelProto, list[str]]:
    """``torch.onnx.export(module, inputs, dynamo=False, **options)``, quietly: the model and the exporter's
    warnings. Its failures are an :class:`ExportError`.

    The model is exported into memory; one whose weights protobuf cannot hold in one message (from
    :data:`~bnfold.export.EXTERNAL_DATA_BYTES` on) goes through a file with external data instead, read back,
    and a warning says so."""
    proto, said, _ = _exported(module, inputs, options, keep_files=False)
    return proto, said


def _exported(
    module: nn.Module, inputs: tuple[Any, ...], options: dict[str, Any], keep_files: bool
) -> tuple[onnx.ModelProto, list[str], tempfile.TemporaryDirectory[str] | None]:
    """:func:`run_torchscript_exporter`; with ``keep_files``, a model past protobuf's limit is not read
    back: its weights stay in the exporter's files, in the folder returned (see ``ExportResult.files``)."""
    weights = module_bytes(module)
    if weights < external_data_limit():
        buffer = io.BytesIO()
        said = _torchscript_export(module, inputs, buffer, options)
        proto = onnx.ModelProto()
        with buffer.getbuffer() as view:  # parsed in place: no second copy of the weights
            proto.ParseFromString(view)
        return proto, said, None
    files = tempfile.TemporaryDirectory(prefix="bnfold-export-")
    try:
        path = Path(files.name) / "model.onnx"
        said = _torchscript_export(module, inputs, str(path), options)
        proto = onnx.load(str(path), load_external_data=not keep_files)  # without: only the graph is read
        if keep_files:
            point_at_files(proto, Path(files.name))
    except BaseException:
        files.cleanup()
        raise
    if not keep_files:
        files.cleanup()
    said.insert(
        0,
        f"the TorchScript exporter wrote the model through a file with external data: its "
        f"weights ({weights / 1e9:.1f} GB) are past what protobuf holds in memory (2 GB)",
    )
    return proto, said, files if keep_files else None


@contextlib.contextmanager
def batch_statistics_symbolic(opset: int | None) -> Any:
    """While exporting at ``opset``, let the TorchScript exporter write a BatchNorm without running statistics
    (``track_running_stats=False``) when the batch is dynamic: its own symbolic needs the batch size to
    compute the batch's statistics and fails without it. Here they are computed over a ``Reshape`` to
    ``[0, C, -1]`` (0 copies the batch dimension), as the exporter computes them for a fixed batch."""
    from torch.onnx._internal.torchscript_exporter import registration, symbolic_helper, symbolic_opset9, utils

    # Before a process's first export only opset 9's symbolic is registered (it writes five outputs)
    getattr(utils, "_trigger_symbolic_function_registration", lambda: None)()
    name = "aten::batch_norm"
    group = registration.registry.get_function_group(name)
    stock = group.get(opset) if group is not None and opset else None
    if stock is None or opset is None:
        yield
        return

    def batch_norm(g: Any, x: Any, weight: Any, bias: Any, mean: Any, var: Any, *rest: Any) -> Any:
        channels = symbolic_helper._get_tensor_dim_size(x, 1)
        unknown = symbolic_helper._get_tensor_dim_size(x, 0) is None and channels is not None
        if unknown and (symbolic_helper._is_none(mean) or symbolic_helper._is_none(var)):
            rows = g.op("Constant", value_t=torch.tensor([0, channels, -1], dtype=torch.int64))
            per_channel = g.op("Transpose", symbolic_helper._reshape_helper(g, x, rows), perm_i=[0, 2, 1])
            axes = g.op("Constant", value_t=torch.tensor([0, 1], dtype=torch.int64))
            var, mean = symbolic_opset9._var_mean(g, per_channel, axes, False, False)
        return stock(g, x, weight, bias, mean, var, *rest)

    torch.onnx.register_custom_op_symbolic(name, batch_norm, opset)  # type: ignore[attr-defined,unused-ignore]
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(name, opset)  # type: ignore[attr-defined,unused-ignore]


def _torchscript_export(module: nn.Module, inputs: tuple[Any, ...], target: Any, options: dict[str, Any]) -> list[str]:
    with quiet() as said, torch.no_grad(), batch_statistics_symbolic(options.get("opset_version")):
        try:
            torch.onnx.export(module, inputs, target, dynamo=False, **options)
        except Exception as exc:  # the TorchScript exporter raises many error types
            raise ExportError(f"the TorchScript exporter failed: {one_line(exc)}") from exc
    messages: list[str] = said
    return messages


def module_bytes(module: nn.Module) -> int:
    """Bytes of the tensors a module holds: parameters, buffers and, for a GraphModule, the tensor
    constants its graph reads (each storage counted once)."""
    tensors = [*module.parameters(), *module.buffers()]
    if isinstance(module, fx.GraphModule):
        for node in module.graph.nodes:
            if node.op == "get_attr":
                value = _attribute(module, node.target)
                if isinstance(value, torch.Tensor):
                    tensors.append(value)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t.numel()}
    return sum(storages.values())


def _attribute(module: nn.Module, target: Any) -> Any:
    value: Any = module
    for part in str(target).split("."):
        value = getattr(value, part, None)
    return value


def _symbolic_dims(node: fx.Node) -> dict[int, str]:
    """The symbolic dimensions of a node's tensor value: axis -> the symbol's expression."""
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        return {}
    return {i: str(d) for i, d in enumerate(value.shape) if is_symbolic(d)}


def is_symbolic(size: Any) -> bool:
    """Whether a size is a free symbol torch.export kept dynamic; a SymInt the trace fixed (the model's code
    needed that size: ``reshape(2, ...)``) is a constant."""
    return isinstance(size, torch.SymInt) and not is_concrete_int(size)


SYMBOLIC = (torch.SymInt, torch.SymFloat, torch.SymBool)


def _computes_with_symbolic_sizes(module: fx.GraphModule) -> fx.Node | None:
    """The first node whose arguments hold a symbolic size (``view(x, [s0, 2, ...])`` with s0 a dynamic
    batch): tracing passes the example's size there, a constant in the graph. None when no node does."""
    symbolic = {n for n in module.graph.nodes if isinstance(n.meta.get("val"), SYMBOLIC)}
    node: fx.Node
    for node in module.graph.nodes:
        if node.op in ("call_function", "call_method") and not isinstance(node.meta.get("val"), SYMBOLIC):
            if any(arg in symbolic for arg in pytree.tree_leaves((node.args, node.kwargs))):
                return node
    return None


def _traced(module: fx.GraphModule) -> bool:
    """Whether a GraphModule comes from torch.export (its inputs carry example values with their shapes)."""
    return any(isinstance(n.meta.get("val"), torch.Tensor) for n in module.graph.nodes if n.op == "placeholder")


def graph_dynamic_axes(module: fx.GraphModule) -> tuple[tuple[int, ...], ...]:
    """For each input of a GraphModule from torch.export, the axes its graph keeps symbolic."""
    return tuple(tuple(_symbolic_dims(n)) for n in module.graph.nodes if n.op == "placeholder")


def _dynamic_axis_names(placeholders: list[fx.Node], outputs: list[fx.Node]) -> dict[str, dict[int, str]]:
    """``dynamic_axes`` for the TorchScript exporter: one name per symbol, so that inputs and outputs that
    share a dimension share its name ("batch" for the inputs' dimension 0)."""
    names: dict[str, str] = {}
    for node in placeholders:
        for axis, symbol in _symbolic_dims(node).items():
            names.setdefault(symbol, "batch" if axis == 0 else f"{_input_name(node)}_dim{axis}")
    axes = {}
    for node in [*placeholders, *outputs]:
        name = _input_name(node) if node.op == "placeholder" else node.name
        dims = {axis: names.setdefault(symbol, f"{name}_dim{axis}") for axis, symbol in _symbolic_dims(node).items()}
        if dims:
            axes[name] = dims
    return axes


def _input_name(node: fx.Node) -> str:
    """An input's name: the forward's argument (``input``), which fx renames where it shadows a builtin."""
    return str(node.target)
