"""From a user's model to the aten-level GraphModule the folds work on, via torch.export."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from bnfold.errors import InputSpecError, TraceError, one_line


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[bool]:
    """Put every submodule in eval mode for the block, then restore each one's flag. Yields whether any
    submodule was training."""
    flags = {m: m.training for m in module.modules()}
    try:
        for submodule in flags:
            submodule.training = False  # not .eval(): exported programs' modules refuse it
        yield any(flags.values())
    finally:
        for submodule, flag in flags.items():
            submodule.training = flag


DynamicAxes = tuple[tuple[int, ...], ...]
"""For each input, the axes torch.export may keep symbolic (non-negative, within the input's rank)."""


def batch_dynamic_shapes(inputs: tuple[Any, ...], axes: DynamicAxes | None = None) -> tuple[dict[int, Any] | None, ...]:
    """Mark the given axes (default: dim 0, the batch) of every tensor input as ones torch.export may keep
    dynamic."""
    if axes is None:
        axes = tuple((0,) if isinstance(t, torch.Tensor) and t.dim() > 0 else () for t in inputs)
    return tuple({a: torch.export.Dim.AUTO for a in ax} or None for ax in axes)


def capture(
    model: nn.Module, inputs: tuple[Any, ...], dynamic_batch: bool = True, axes: DynamicAxes | None = None
) -> tuple[torch.export.ExportedProgram, list[str]]:
    """torch.export the model in eval mode without touching the caller's flags; notes say what changed.

    ``axes`` (default: the batch axis when ``dynamic_batch``) may stay symbolic. An example of size 1 on
    such an axis would pin it to 1 (torch.export specialises 0 and 1), so the trace sees the example
    repeated to size 2 there; when the model cannot take that, it is traced as given and the axis stays
    fixed (said in the notes)."""
    _check_arity(model, inputs)
    notes: list[str] = []
    if axes is None:
        axes = tuple((0,) if dynamic_batch and isinstance(t, torch.Tensor) and t.dim() > 0 else () for t in inputs)
    with eval_mode(model) as was_training:
        if was_training:
            notes.append(
                "the model was in training mode; it was traced in eval mode (BatchNorm uses running "
                "statistics) and its flags were restored afterwards"
            )
        program = _export_dynamic(model, inputs, axes, notes)
    return program, notes


def _export_dynamic(
    model: nn.Module, inputs: tuple[Any, ...], axes: DynamicAxes, notes: list[str]
) -> torch.export.ExportedProgram:
    dynamic = batch_dynamic_shapes(inputs, axes) if any(axes) else None
    widened = widened_inputs(inputs, axes)
    program = None
    if widened is not None:
        try:
            program = _export(model, widened, dynamic)
        except (InputSpecError, TraceError):
            notes.append(
                "the model does not take the example repeated along its dynamic axes: traced with "
                "the example as given, so axes of size 1 stay fixed"
            )
    program = program or _export(model, inputs, dynamic)
    notes += fixed_by_trace(program, axes)
    return program


def fixed_by_trace(program: torch.export.ExportedProgram, axes: DynamicAxes) -> list[str]:
    """A note for each dimension asked to stay dynamic that the trace fixed (the model's code needs that size,
    ``x.reshape(2, ...)``): the folded model and its ONNX file take that size only."""
    from bnfold.export.torchscript import is_symbolic

    users = set(program.graph_signature.user_inputs)
    values = [n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder" and n.name in users]
    notes = []
    for index, (value, wanted) in enumerate(zip(values, axes, strict=False)):
        if not isinstance(value, torch.Tensor):
            continue
        for axis in wanted:
            if not is_symbolic(value.shape[axis]):
                size = int(value.shape[axis])
                notes.append(
                    f"dimension {axis} of input {index} stays fixed at {size}: the model's code needs that size "
                    "(torch.export could not keep it dynamic), so the folded model takes that size only"
                )
    return notes


def widened_inputs(inputs: tuple[Any, ...], axes: DynamicAxes) -> tuple[Any, ...] | None:
    """The inputs repeated to size 2 along every dynamic axis of size 1; None when none has size 1."""
    pairs = list(zip(inputs, axes, strict=True))
    if not any(isinstance(t, torch.Tensor) and any(t.shape[a] == 1 for a in ax) for t, ax in pairs):
        return None
    out = []
    for tensor, ax in zip(inputs, axes, strict=True):
        for axis in ax if isinstance(tensor, torch.Tensor) else ():
            if tensor.shape[axis] == 1:
                tensor = torch.cat([tensor, tensor], dim=axis)
        out.append(tensor)
    return tuple(out)


def _export(model: nn.Module, inputs: tuple[Any, ...], dynamic: Any) -> torch.export.ExportedProgram:
    try:
        return torch.export.export(model, inputs, dynamic_shapes=_as_bound(model, dynamic), strict=False)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
        if _shape_mismatch(exc):
            raise InputSpecError(f"the inputs do not fit the model: {one_line(exc)}; check --input-shape") from exc
        raise TraceError(f"the model's forward failed while tracing: {one_line(exc)}") from exc
    except Exception as exc:  # torch.export raises many private error types
        raise TraceError(f"torch.export could not trace the model: {one_line(exc)}") from exc


def _check_arity(model: nn.Module, inputs: tuple[Any, ...]) -> None:
    """An :class:`InputSpecError` when ``forward`` cannot take ``len(inputs)`` positional inputs."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # no signature Python can read: the trace says what is wrong
        return
    kinds = [p.kind for p in parameters]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if not len(required) <= len(inputs) <= len(positional):
        takes = f"{len(required)} to {len(positional)}" if len(required) < len(positional) else str(len(required))
        raise InputSpecError(
            f"the model's forward takes {takes} input(s), {len(inputs)} were given: give --input-shape once per input"
        )


def _as_bound(model: nn.Module, dynamic: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    """``dynamic`` (one entry per input) laid out as torch.export binds the inputs to ``forward``'s
    parameters: the entries of the inputs a ``*args`` parameter takes go in as one tuple."""
    if dynamic is None:
        return None
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # no signature Python can read: as given
        return dynamic
    for index, parameter in enumerate(parameters[: len(dynamic)]):
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return (*dynamic[:index], tuple(dynamic[index:]))
    return dynamic


def _shape_mismatch(exc: BaseException) -> bool:
    text = str(exc)
    return any(
        k in text for k in ("size mismatch", "Expected", "expected input", "shape", "must match", "Guard failed")
    )


def graph_module(program: torch.export.ExportedProgram) -> fx.GraphModule:
    """A runnable GraphModule whose parameters are get_attr nodes the folds can rewrite.

    It is flagged as in eval mode, which is what its graph computes (``capture`` traced in eval mode), so
    that exporting it raises no training-mode warning; its ``eval()`` raises, hence the flags are set."""
    gm: fx.GraphModule = program.module()
    for submodule in gm.modules():
        submodule.training = False
    return gm


def plain_module(gm: fx.GraphModule) -> fx.GraphModule:
    """The folded graph as a plain GraphModule in eval mode, without the input-check hooks and the
    ``_guards_fn`` call ``ExportedProgram.module()`` adds: they cost more than a small model's layers, and
    without them ``eval()`` and ``train()`` work. Inputs and outputs keep their structure; where that
    structure is plain (positional inputs; one output or a tuple), without pytree calls (:func:`flat_codegen`)."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            gm.graph.erase_node(node)
    flat_codegen(gm.graph)
    plain = fx.GraphModule(gm, gm.graph, class_name="FoldedModule")
    return plain.eval()


def flat_codegen(graph: fx.Graph) -> bool:
    """Generate ``forward(self, x, y)`` returning ``out`` or ``(a, b)`` directly instead of flattening the
    inputs and unflattening the outputs with pytree on every call (microseconds that show on small
    models), when that changes nothing for the caller: positional inputs only, and the output one tensor
    or a flat tuple. Returns whether it did."""
    info = getattr(graph._codegen, "pytree_info", None)
    output = next((n for n in reversed(graph.nodes) if n.op == "output"), None)
    if info is None or output is None or not isinstance(output.args[0], (tuple, list)):
        return False
    count = sum(1 for n in graph.nodes if n.op == "placeholder")
    if info.in_spec != pytree.tree_structure((tuple(range(count)), {})):
        return False
    flat = tuple(output.args[0])
    if info.out_spec == pytree.tree_structure(0) and len(flat) == 1:
        result: Any = flat[0]
    elif info.out_spec == pytree.tree_structure(tuple(range(len(flat)))):
        result = flat
    else:
        return False
    graph.set_codegen(fx.graph.CodeGen())
    output.args = (result,)
    return True
