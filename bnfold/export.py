"""Export to ONNX: the folded GraphModule through one of torch.onnx's two exporters, checked and annotated.

``exporter="auto"`` (the default) takes the TorchScript exporter and falls back on the dynamo exporter
when it fails. On a folded graph (plain aten ops, no BatchNorm left to fold) the TorchScript exporter is
several times faster and its output runs as fast in onnxruntime (measured in ``benchmarks/PROFILE.md``);
torch deprecates it,
so the dynamo exporter stays one option away (``exporter="dynamo"``) and takes over where it is gone
(``convert`` also re-exports with it when the TorchScript exporter's output fails parity).

Exporter chatter (progress lines, warnings) is captured, not printed; the warnings go into the report.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from bnfold.errors import ExportError, one_line
from bnfold.fold.capture import batch_dynamic_shapes, widened_inputs

DEFAULT_OPSET = 18
EXPORTERS = ("auto", "torchscript", "dynamo")
DYNAMO = "torch.onnx.export (dynamo)"
TORCHSCRIPT = "torch.onnx.export (TorchScript)"
TORCHSCRIPT_MAX_OPSET = 20


@dataclass
class ExportResult:
    """An exported ONNX model and what the exporter said while making it. After ``convert`` wrote the model
    with external data, ``model`` is the graph as written, its weights left in the ``.data`` file
    (``onnx.external_data_helper.load_external_data_for_model`` reads them)."""

    model: onnx.ModelProto
    exporter: str
    opset: int
    warnings: list[str] = field(default_factory=list)

    def batchnorm_nodes(self) -> int:
        return count_ops(self.model, "BatchNormalization")


def count_ops(model: onnx.ModelProto, op_type: str) -> int:
    """How many nodes of ``op_type`` the graph (and its subgraphs) holds."""

    def walk(graph: onnx.GraphProto) -> int:
        total = 0
        for node in graph.node:
            total += node.op_type == op_type
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    total += walk(attr.g)
                total += sum(walk(g) for g in attr.graphs)
        return total

    return walk(model.graph)


@contextlib.contextmanager
def quiet() -> Any:
    """Silence stdout, stderr, Python warnings and torch.onnx logging; yield the captured warnings."""
    captured: list[str] = []
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    sink = io.StringIO()
    with (
        warnings.catch_warnings(record=True) as caught,
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("always")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield captured
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
            seen = dict.fromkeys(
                str(w.message).splitlines()[0]
                for w in caught
                if not issubclass(w.category, (DeprecationWarning, FutureWarning))
            )
            captured.extend(seen)


def export_module(
    module: nn.Module | torch.export.ExportedProgram,
    inputs: tuple[Any, ...],
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    optimize: bool = True,
) -> ExportResult:
    """Export with the dynamo exporter. A GraphModule from torch.export keeps the axes its graph has
    symbolic; another module gets a dynamic batch dimension (``dynamic_batch``) when it allows."""
    opset = opset or DEFAULT_OPSET
    dynamic = None
    if isinstance(module, fx.GraphModule) and _traced(module):  # its graph says which axes are symbolic
        axes = graph_dynamic_axes(module)
        if any(axes):
            dynamic, inputs = batch_dynamic_shapes(inputs, axes), widened_inputs(inputs, axes) or inputs
    elif dynamic_batch and not isinstance(module, torch.export.ExportedProgram):
        dynamic = batch_dynamic_shapes(inputs)
    with quiet() as said:
        try:
            program = torch.onnx.export(
                module,
                inputs,
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=dynamic,
                optimize=optimize,
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many private error types
            raise ExportError(f"torch.onnx.export failed: {one_line(exc)}") from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    proto = program.model_proto
    remove_unused_initializers(proto)
    name_batch_dimension(proto)
    return ExportResult(proto, DYNAMO, opset, said)


def export_folded(
    module: fx.GraphModule, inputs: tuple[Any, ...], *, exporter: str = "auto", opset: int | None = None
) -> ExportResult:
    """Export a folded GraphModule with ``exporter`` ("auto", "torchscript" or "dynamo", see the module
    docstring). With "auto", why the TorchScript exporter was not used is the result's first warning."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, not {exporter!r}")
    if exporter == "dynamo":
        return _tidied(export_module(module, inputs, opset=opset, optimize=False))
    try:
        return export_torchscript(module, inputs, opset=opset)
    except ExportError as exc:
        if exporter == "torchscript":
            raise
        result = _tidied(export_module(module, inputs, opset=opset, optimize=False))
        result.warnings.insert(0, f"exported with the dynamo exporter: {exc}")
        return result


def _tidied(result: ExportResult) -> ExportResult:
    result.model = tidy(result.model)
    return result


def export_torchscript(module: fx.GraphModule, inputs: tuple[Any, ...], *, opset: int | None = None) -> ExportResult:
    """Export a GraphModule of aten ops with the TorchScript exporter.

    Inputs and outputs keep the graph's node names, as the dynamo exporter names them; every dimension
    torch.export kept symbolic is dynamic (dimension 0 of the inputs named "batch"), the others fixed.
    """
    opset = opset or DEFAULT_OPSET
    if opset > TORCHSCRIPT_MAX_OPSET:
        raise ExportError(f"the TorchScript exporter stops at opset {TORCHSCRIPT_MAX_OPSET}, {opset} was asked for")
    placeholders = [node for node in module.graph.nodes if node.op == "placeholder"]
    outputs = pytree.tree_leaves(next(n for n in reversed(module.graph.nodes) if n.op == "output").args[0])
    if not all(isinstance(o, fx.Node) and o.op != "placeholder" for o in outputs) or len(set(outputs)) < len(outputs):
        raise ExportError("the TorchScript exporter cannot name outputs that are inputs, constants or repeated")
    names_in, names_out = [n.name for n in placeholders], [n.name for n in outputs]
    dynamic = _dynamic_axis_names(placeholders, outputs)
    proto, said = run_torchscript_exporter(
        module, inputs, opset_version=opset, input_names=names_in, output_names=names_out, dynamic_axes=dynamic or None
    )
    return ExportResult(tidy(proto), TORCHSCRIPT, opset, said)


def run_torchscript_exporter(
    module: nn.Module, inputs: tuple[Any, ...], **options: Any
) -> tuple[onnx.ModelProto, list[str]]:
    """``torch.onnx.export(module, inputs, dynamo=False, **options)``, quietly: the model and the exporter's
    warnings. Its failures are an :class:`ExportError`.

    The model is exported into memory; one whose weights protobuf cannot hold in one message (from
    :data:`EXTERNAL_DATA_BYTES` on) goes through a file with external data instead, read back, and a warning
    says so."""
    weights = module_bytes(module)
    if weights >= EXTERNAL_DATA_BYTES:
        with tempfile.TemporaryDirectory(prefix="bnfold-export-") as folder:
            path = Path(folder) / "model.onnx"
            said = _torchscript_export(module, inputs, str(path), options)
            proto = onnx.load(str(path))  # each tensor read from its file, into the one message
        said.insert(
            0,
            f"the TorchScript exporter wrote the model through a file with external data: its "
            f"weights ({weights / 1e9:.1f} GB) are past what protobuf holds in memory (2 GB)",
        )
        return proto, said
    buffer = io.BytesIO()
    said = _torchscript_export(module, inputs, buffer, options)
    proto = onnx.ModelProto()
    with buffer.getbuffer() as view:  # parsed in place: no second copy of the weights
        proto.ParseFromString(view)
    return proto, said


@contextlib.contextmanager
def batch_statistics_symbolic(opset: int | None) -> Any:
    """While exporting at ``opset``, let the TorchScript exporter write a BatchNorm without running statistics
    (``track_running_stats=False``) when the batch is dynamic: its own symbolic needs the batch size to
    compute the batch's statistics and fails without it. Here they are computed over a ``Reshape`` to
    ``[0, C, -1]`` (0 copies the batch dimension), as the exporter computes them for a fixed batch."""
    from torch.onnx._internal.torchscript_exporter import registration, symbolic_helper, symbolic_opset9

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
    return {i: str(d) for i, d in enumerate(value.shape) if isinstance(d, torch.SymInt)}


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
            names.setdefault(symbol, "batch" if axis == 0 else f"{node.name}_dim{axis}")
    axes = {}
    for node in [*placeholders, *outputs]:
        symbols = _symbolic_dims(node).items()
        dims = {axis: names.setdefault(symbol, f"{node.name}_dim{axis}") for axis, symbol in symbols}
        if dims:
            axes[node.name] = dims
    return axes


SHARED_INITIALIZER_ELEMENTS = 64  # equal initializers up to this size are shared; larger ones are weights


def tidy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph without the arithmetic an exporter leaves behind, as a new ModelProto: constant subgraphs
    evaluated (shape arithmetic too, where shape inference knows the shapes), Identity nodes, repeated
    computations and dead nodes removed, Constant nodes lifted into initializers and equal small
    initializers shared (the TorchScript exporter writes two per Clip, and onnxruntime creates sessions
    slower for them: ``benchmarks/PROFILE.md``).

    The passes are listed one by one: onnxscript's default rewrite rules would fuse BatchNorms into convs
    and pads into convs behind the fold's back, removing BNs whose records say they were kept. Nothing that
    reads a graph input is evaluated, so an initializer a caller can feed stays live.
    """
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript.optimizer._constant_folding import FoldConstantsPass

    from bnfold.fold.onnx._evaluate import DEFAULT_OUTPUT_LIMIT, small_fill
    from bnfold.onnx_passes import FoldShapeArithmetic

    work = ir.serde.deserialize_model(model)
    subgraphs = any(
        attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for node in model.graph.node
        for attr in node.attribute
    )
    passes = ir.passes.Sequential(
        FoldShapeArithmetic(),
        FoldConstantsPass(
            shape_inference=True, input_size_limit=8192, output_size_limit=DEFAULT_OUTPUT_LIMIT, should_fold=small_fill
        ),
        # onnx_ir renames an outer value a subgraph returns through an Identity: not with subgraphs
        *([] if subgraphs else [common.IdentityEliminationPass()]),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(size_limit=SHARED_INITIALIZER_ELEMENTS),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedOpsetsPass(),
    )
    with quiet():
        passes(work)
    tidied = ir.serde.serialize_model(work)
    remove_unused_initializers(tidied)
    produced = {name for node in tidied.graph.node for name in node.output}
    kept = [info for info in tidied.graph.value_info if info.name in produced]
    del tidied.graph.value_info[:]
    tidied.graph.value_info.extend(kept)
    return tidied


def name_batch_dimension(model: onnx.ModelProto, name: str = "batch") -> None:
    """Call the symbolic dimension 0 of the first input ``batch`` everywhere it appears."""
    if not model.graph.input:
        return
    dims = model.graph.input[0].type.tensor_type.shape.dim
    symbol = dims[0].dim_param if dims else ""
    if not symbol:
        return
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = name


def remove_unused_initializers(model: onnx.ModelProto) -> int:
    """Drop initializers no node reads (nor a subgraph of one: If, Loop, Scan bodies read outer values by
    name); returns how many were removed."""
    from bnfold.fold.onnx._nodes import subgraph_references

    used = {name for node in model.graph.node for name in [*node.input, *subgraph_references(node)]}
    used |= {o.name for o in model.graph.output}
    keep = [init for init in model.graph.initializer if init.name in used]
    removed = len(model.graph.initializer) - len(keep)
    if removed:
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return removed


def annotate(model: onnx.ModelProto, entries: dict[str, Any]) -> None:
    """Write ``bnfold.*`` entries into the model's metadata_props (JSON for non-strings)."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in entries.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, text


def check(model: onnx.ModelProto | Path) -> None:
    """onnx.checker on the model (or the saved file: its external data is checked for presence, not read),
    as an ExportError when it fails."""
    try:
        onnx.checker.check_model(model if isinstance(model, onnx.ModelProto) else str(model))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported ONNX model does not pass onnx.checker: {one_line(exc)}") from exc


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by the model's initializers (protobuf cannot serialise past 2 GB), without serialising
    anything: ``ByteSize()`` of a model past 2 GB raises."""
    return sum(_stored_bytes(t) for t in model.graph.initializer)


def _stored_bytes(tensor: onnx.TensorProto) -> int:
    """A tensor's bytes, from its shape and type where they tell (reading ``raw_data`` would copy it)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return next((int(e.value) for e in tensor.external_data if e.key == "length"), 0)
    if tensor.data_type not in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except Exception:  # an element type numpy has no match for (4-bit, float8): count it as serialised
            itemsize = 0
        if itemsize:
            return int(itemsize * math.prod(tensor.dims))
    return int(tensor.ByteSize())


EXTERNAL_DATA = ("auto", "always", "never")
EXTERNAL_DATA_AUTO_BYTES = 1_000_000
"""``external_data="auto"``: weights from this size on go to a ``.data`` file beside the model. onnxruntime
creates sessions from such a pair faster; below it one file is simpler and faster (where the two cross over
is measured in ``benchmarks/PROFILE.md``)."""
EXTERNAL_DATA_BYTES = 1_800_000_000
"""Past this, one file cannot hold the model (protobuf's 2 GB limit): the weights always go beside it."""


def external_data_path(model: onnx.ModelProto, path: Path, external_data: str = "auto") -> Path | None:
    """Where :func:`save` writes ``model``'s weights for ``path``: ``<name>.data`` beside it, or None for one
    self-contained file. Raises :class:`ExportError` for "never" on a model one file cannot hold."""
    if external_data not in EXTERNAL_DATA:
        raise ValueError(f"external_data must be one of {', '.join(EXTERNAL_DATA)}, not {external_data!r}")
    size = tensor_bytes(model)
    if external_data == "never" and size >= EXTERNAL_DATA_BYTES:
        raise ExportError(
            f"the weights ({size / 1e9:.1f} GB) do not fit in one ONNX file (protobuf's 2 GB limit): "
            "use --external-data auto"
        )
    external = (
        size >= EXTERNAL_DATA_BYTES
        or external_data == "always"
        or (external_data == "auto" and size >= EXTERNAL_DATA_AUTO_BYTES)
    )
    return path.with_name(path.name + ".data") if external else None


def save(
    model: onnx.ModelProto,
    path: Path,
    final_name: str | None = None,
    external_data: str = "auto",
    *,
    in_place: bool = False,
) -> None:
    """Write the model to ``path``, its weights to ``<final_name>.data`` beside it where
    :func:`external_data_path` says so (``final_name``: the name the file will have once moved into
    place). An existing ``.data`` file is replaced, never appended to.

    ``model`` is left as it was, at the cost of a copy of it; with ``in_place`` its weights move into the
    ``.data`` file instead, one tensor at a time, and ``model`` is left holding the graph that refers to them:
    no second copy of weights past 2 GB. (protobuf frees their memory only with the whole message: replace
    ``model`` by ``onnx.load(path, load_external_data=False)`` to have it back.)"""
    target = Path(path).with_name(final_name or Path(path).name)
    data = external_data_path(model, target, external_data)
    if data is None:
        onnx.save_model(model, str(path))
        return
    if not in_place:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # marking tensors external rewrites them
        model = copy
    mark_external(model, data.name)
    with tempfile.TemporaryDirectory(dir=data.parent, prefix=f".{data.name}.") as folder:
        staged = Path(folder) / target.name  # beside a fresh .data: onnx appends to an existing one
        onnx.save_model(model, str(staged))  # writes each marked tensor to the .data file, then drops it
        written = Path(folder) / data.name
        if not written.exists():  # no tensor reached the threshold: the promised file, empty
            written.touch()
        os.replace(written, data)
        os.replace(staged, path)


def session_source(model: onnx.ModelProto | Path, folder: Path, *, in_place: bool = False) -> bytes | Path:
    """What onnxruntime creates a session from: a file as it is; a model protobuf can serialise, as bytes;
    a larger one saved into ``folder`` with its weights beside it (``in_place``: see :func:`save`)."""
    if isinstance(model, Path):
        return model
    if tensor_bytes(model) < EXTERNAL_DATA_BYTES:
        return bytes(model.SerializeToString())
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / "model.onnx"
    save(model, path, external_data="always", in_place=in_place)
    return path


def mark_external(model: onnx.ModelProto, location: str, size_threshold: int = 1024) -> None:
    """Point every initializer of ``size_threshold`` bytes or more at ``location`` (relative to the model's
    folder), as ``onnx.save_model(save_as_external_data=True)`` does -- without its check for an existing
    file named ``location`` in the *current* directory, which made a second run in the same folder fail."""
    from onnx.external_data_helper import _get_initializer_tensors, set_external_data

    for tensor in _get_initializer_tensors(model):
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= size_threshold:
            set_external_data(tensor, location)


def save_ort_optimized(model: Path, path: Path, threads: int | None = None) -> Path | None:
    """Write what onnxruntime makes of ``model`` at ``ORT_ENABLE_ALL`` on the CPU provider, so that sessions
    start from it without optimising again (faster session creation, measured in ``benchmarks/PROFILE.md``).
    onnxruntime warns that such a file can hold layouts specific to the CPU it was made on.

    When ``model`` keeps its weights in ``<name>.data``, so does the optimized model, in ``<path name>.data``
    beside ``path`` (returned; None for one file)."""
    import onnxruntime as ort

    from bnfold.verify.runners import session_options

    options = session_options("all", threads)
    options.optimized_model_filepath = str(path)
    data = None
    if model.with_name(model.name + ".data").exists():
        data = path.with_name(path.name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", data.name)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own error types
        raise ExportError(f"onnxruntime could not save an optimized model: {one_line(exc)}") from exc
    return data


def rename_io(model: onnx.ModelProto, inputs: Sequence[str] = (), outputs: Sequence[str] = ()) -> None:
    """Give the graph's inputs (initializers aside) and outputs the names asked for, everywhere they are read
    or written. :class:`ExportError` when the count does not match or a name is taken or repeated."""
    stored = {init.name for init in model.graph.initializer}
    renames: dict[str, str] = {}
    for kind, values, names in (("input", [v for v in model.graph.input if v.name not in stored], inputs),
                                ("output", list(model.graph.output), outputs)):  # fmt: skip
        if not names:
            continue
        if len(names) != len(values):
            listed = ", ".join(v.name for v in values)
            raise ExportError(
                f"--{kind}-names gives {len(names)} name(s); the model has {len(values)} {kind}(s): {listed}"
            )
        renames.update({v.name: n for v, n in zip(values, names, strict=True) if v.name != n})
    _check_new_names(model, renames, [*inputs, *outputs])
    _apply_renames(model, renames)


def _check_new_names(model: onnx.ModelProto, renames: Mapping[str, str], wanted: Sequence[str]) -> None:
    repeated = sorted({n for n in wanted if list(wanted).count(n) > 1})
    if repeated:
        raise ExportError(f"the input and output names must differ: {', '.join(repeated)} given twice")
    taken = {*(v for node in model.graph.node for v in (*node.input, *node.output)),
             *(init.name for init in model.graph.initializer)} - set(renames)  # fmt: skip
    clash = sorted(set(renames.values()) & taken)
    if clash:
        raise ExportError(f"the name {clash[0]!r} is already a tensor of the model: choose another")


def _apply_renames(model: onnx.ModelProto, renames: Mapping[str, str]) -> None:
    for node in model.graph.node:
        node.input[:] = [renames.get(v, v) for v in node.input]
        node.output[:] = [renames.get(v, v) for v in node.output]
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        value.name = renames.get(value.name, value.name)
