"""Clean-up and edits of a written ONNX graph: :func:`tidy` (the arithmetic an exporter leaves behind),
unused initializers, the batch dimension's name, the inputs' and outputs' names, metadata."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import onnx

from bnfold.errors import ExportError

if TYPE_CHECKING:
    import onnx_ir as ir

    from bnfold.export.files import WrittenWeights


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


SHARED_INITIALIZER_ELEMENTS = 64  # equal initializers up to this size are shared; larger ones are weights


def tidy(model: onnx.ModelProto, weights: WrittenWeights | None = None) -> onnx.ModelProto:
    """The graph without the arithmetic an exporter leaves behind, as a new ModelProto: constant subgraphs
    evaluated (shape arithmetic too, where shape inference knows the shapes), Identity nodes, repeated
    computations and dead nodes removed, Constant nodes lifted into initializers and equal small
    initializers shared (the TorchScript exporter writes two per Clip, and onnxruntime creates sessions
    slower for them: ``benchmarks/PROFILE.md``).

    Nothing that reads a graph input is evaluated, so an initializer a caller can feed stays live. With
    ``weights`` (the file the model's weights were written into), the weights the passes made (a merged
    kernel) are appended to it too, not serialised into the message.
    """
    import onnx_ir as ir

    from bnfold.export.result import quiet

    work = ir.serde.deserialize_model(model)
    on_disk = [v.const_value for v in work.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)]
    with quiet():
        _tidy_passes(has_subgraphs(model))(work)
    if weights is not None:
        _append_made_weights(work.graph, weights)
    tidied = ir.serde.serialize_model(work)
    for value in work.graph.initializers.values():  # rewrite rules keep the last graph they matched in: not
        value.const_value = None  # the weights with it (they wrap the tensors of ``model``)
    for tensor in on_disk:  # nor the weights file, mapped whole by every tensor a pass read
        _unmap(tensor)
    remove_unused_initializers(tidied)
    _drop_stale_value_info(tidied)
    return tidied


def _append_made_weights(graph: ir.Graph, weights: WrittenWeights) -> None:
    """Append every initializer held in memory from ``INLINE_BYTES`` on to the weights file (page-aligned,
    hashed as written, as the export wrote the others) and point it there."""
    import onnx_ir as ir

    from bnfold.export.files import PAGE, HashingWriter
    from bnfold.export.weights_file import INLINE_BYTES

    made = [v for v in graph.initializers.values() if _in_memory(v.const_value, INLINE_BYTES)]
    if not made:
        return
    with weights.path.open("ab") as file, HashingWriter(file, weights.digest) as out:
        for value in made:
            tensor = value.const_value
            assert tensor is not None
            data = tensor.tobytes()
            out.write(b"\0" * (-out.tell() % PAGE))
            offset = out.tell()
            out.write(data)
            location = str(weights.path)
            value.const_value = ir.ExternalTensor(
                location, offset, len(data), tensor.dtype, shape=ir.Shape(tensor.shape.numpy()), name=value.name or ""
            )
        weights.size = out.tell()


def _in_memory(tensor: Any, size: int) -> bool:
    import onnx_ir as ir

    return tensor is not None and not isinstance(tensor, ir.ExternalTensor) and tensor.nbytes >= size


def _unmap(tensor: ir.ExternalTensor) -> None:
    """Close the memory map through which a pass read an external tensor (it maps the whole file, and the
    pages it touched stay resident while it is open); read again, it maps the file again."""
    try:
        tensor.release()
    except BufferError:  # an array still views the map: it goes when that array does
        pass


def _tidy_passes(subgraphs: bool) -> ir.passes.Sequential:
    """:func:`tidy`'s passes, listed one by one: onnxscript's default rewrite rules would fuse BatchNorms into
    convs and pads into convs behind the fold's back, removing BNs whose records say they were kept."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript.optimizer._constant_folding import FoldConstantsPass

    from bnfold.export.passes import FoldShapeArithmetic, MergeParallelConvs
    from bnfold.fold.onnx._evaluate import DEFAULT_OUTPUT_LIMIT, small_fill

    return ir.passes.Sequential(
        FoldShapeArithmetic(),
        FoldConstantsPass(
            shape_inference=True, input_size_limit=8192, output_size_limit=DEFAULT_OUTPUT_LIMIT, should_fold=small_fill
        ),
        # onnx_ir renames an outer value a subgraph returns through an Identity: not with subgraphs
        *([] if subgraphs else [common.IdentityEliminationPass()]),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        MergeParallelConvs(),
        common.DeduplicateInitializersPass(size_limit=SHARED_INITIALIZER_ELEMENTS),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedOpsetsPass(),
    )


def has_subgraphs(model: onnx.ModelProto) -> bool:
    return any(
        attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for node in model.graph.node
        for attr in node.attribute
    )


def _drop_stale_value_info(model: onnx.ModelProto) -> None:
    """Keep the shape annotations of values a node still produces."""
    produced = {name for node in model.graph.node for name in node.output}
    kept = [info for info in model.graph.value_info if info.name in produced]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


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
