"""Export to ONNX: the folded GraphModule through one of torch.onnx's two exporters, checked and annotated.

``exporter="auto"`` (the default) takes the TorchScript exporter and falls back on the dynamo exporter
when it fails. On a folded graph (plain aten ops, no BatchNorm left to fold) the TorchScript exporter is
several times faster and its output runs as fast in onnxruntime (measured in ``benchmarks/PROFILE.md``);
torch deprecates it, so the dynamo exporter stays one option away (``exporter="dynamo"``) and takes over
where it is gone (``convert`` also re-exports with it when the TorchScript exporter's output fails parity).

Exporter chatter (progress lines, warnings) is captured, not printed; the warnings go into the report.

The package: the dynamo exporter and ``auto``'s choice here, the TorchScript exporter in
:mod:`.torchscript`, the clean-up of the written graph in :mod:`.cleanup`, saving and external data in
:mod:`.files`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from bnfold.errors import ExportError, one_line
from bnfold.export.cleanup import (
    SHARED_INITIALIZER_ELEMENTS,
    annotate,
    count_ops,
    name_batch_dimension,
    remove_unused_initializers,
    rename_io,
    tidy,
)
from bnfold.export.files import (
    EXTERNAL_DATA,
    EXTERNAL_DATA_AUTO_BYTES,
    check,
    external_data_limit,
    external_data_path,
    mark_external,
    save,
    save_ort_optimized,
    session_source,
    tensor_bytes,
)
from bnfold.export.result import (
    DEFAULT_OPSET,
    DYNAMO,
    EXPORTERS,
    TORCHSCRIPT,
    TORCHSCRIPT_MAX_OPSET,
    ExportResult,
    quiet,
)
from bnfold.export.torchscript import (
    _traced,
    batch_statistics_symbolic,
    export_torchscript,
    graph_dynamic_axes,
    module_bytes,
    run_torchscript_exporter,
)
from bnfold.fold.capture import batch_dynamic_shapes, widened_inputs

EXTERNAL_DATA_BYTES = 1_800_000_000
"""Past this, one file cannot hold the model (protobuf's 2 GB limit): the weights always go beside it. Every
part of the package reads it here, through :func:`~bnfold.export.files.external_data_limit`."""

__all__ = [
    "DEFAULT_OPSET",
    "DYNAMO",
    "EXPORTERS",
    "EXTERNAL_DATA",
    "EXTERNAL_DATA_AUTO_BYTES",
    "EXTERNAL_DATA_BYTES",
    "SHARED_INITIALIZER_ELEMENTS",
    "TORCHSCRIPT",
    "TORCHSCRIPT_MAX_OPSET",
    "ExportResult",
    "annotate",
    "batch_statistics_symbolic",
    "check",
    "count_ops",
    "export_folded",
    "export_module",
    "export_torchscript",
    "external_data_limit",
    "external_data_path",
    "graph_dynamic_axes",
    "mark_external",
    "module_bytes",
    "name_batch_dimension",
    "quiet",
    "remove_unused_initializers",
    "rename_io",
    "run_torchscript_exporter",
    "save",
    "save_ort_optimized",
    "session_source",
    "tensor_bytes",
    "tidy",
]


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
    module: fx.GraphModule,
    inputs: tuple[Any, ...],
    *,
    exporter: str = "auto",
    opset: int | None = None,
    weights_file: bool | Path = False,
) -> ExportResult:
    """Export a folded GraphModule with ``exporter`` ("auto", "torchscript" or "dynamo", see the module
    docstring). With "auto", why the TorchScript exporter was not used is the result's first warning.
    ``weights_file``: see :func:`export_torchscript` (the dynamo exporter keeps the weights in the model)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, not {exporter!r}")
    if exporter == "dynamo":
        return _tidied(export_module(module, inputs, opset=opset, optimize=False))
    try:
        return export_torchscript(module, inputs, opset=opset, weights_file=weights_file)
    except ExportError as exc:
        if exporter == "torchscript":
            raise
        result = _tidied(export_module(module, inputs, opset=opset, optimize=False))
        result.warnings.insert(0, f"exported with the dynamo exporter: {exc}")
        return result


def _tidied(result: ExportResult) -> ExportResult:
    result.model = tidy(result.model)
    return result
