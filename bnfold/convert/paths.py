"""The two ways to a folded ONNX model, behind one shape (:class:`Converted`).

* PyTorch models (torch.export archives, state dicts, checkpoints, modules) fold on the aten graph, then
  export (:func:`bnfold.export.export_folded`: the TorchScript exporter, or the dynamo exporter); parity
  runs the full matrix against the original in float64.
* ONNX files and TorchScript archives fold on the ONNX graph (TorchScript through the TorchScript
  exporter with constant folding off, so every BatchNormalization is still there to fold).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from bnfold.errors import ExportError, InputSpecError
from bnfold.export import (
    ExportResult,
    export_folded,
    export_module,
    remove_unused_initializers,
    run_torchscript_exporter,
)
from bnfold.fold import FoldResult, fold
from bnfold.fold.capture import eval_mode
from bnfold.fold.records import BnRecord
from bnfold.load import InputSpec, LoadedModel, load_data

ONNX_LEVEL = ("onnx", "torchscript")
Batches = list[tuple[str, tuple[Any, ...]]]


@dataclass
class Converted:
    """A folded ONNX model with its records, and how to verify and time it against the original."""

    exported: ExportResult
    records: list[BnRecord]
    notes: list[str]
    fold_seconds: float
    original: Any  # an nn.Module, or ONNX bytes for an ONNX input
    folded: Any
    recalibrated: bool = False
    fold_result: FoldResult | None = None
    original_onnx: Callable[[], bytes] | None = None
    warnings: list[str] = field(default_factory=list)


def calibration_batches(path: Path, count: int, batch: int = 64) -> list[tuple[torch.Tensor, ...]]:
    """``--recalibrate`` data as batches of at most ``batch`` samples."""
    data = load_data(path, count)
    n = data[0].shape[0]
    return [tuple(t[i : i + batch].float() for t in data) for i in range(0, n, batch)]


def convert_torch(
    loaded: LoadedModel,
    inputs: tuple[torch.Tensor, ...],
    opset: int,
    recalibrate: Path | None = None,
    reshaped: bool = False,
    affine_form: str = "batchnorm",
    exporter: str = "auto",
) -> Converted:
    """Fold on the aten graph, then export the folded GraphModule."""
    calibration = calibration_batches(recalibrate, len(inputs)) if recalibrate else None
    program = loaded.exported if not reshaped else None
    source: nn.Module | torch.export.ExportedProgram | None = program if program is not None else loaded.module
    if source is None:
        raise ExportError(f"{loaded.path}: holds no runnable PyTorch model")
    folded = fold(source, inputs, calibration=calibration, affine_form=affine_form)
    exported = export_folded(folded.module, inputs, exporter=exporter, opset=opset)
    original = folded.reference or (program.module() if program is not None else source)
    if folded.reference is not None:
        folded.notes.append("parity reference: the original model with the re-estimated statistics, unfolded")

    def original_onnx() -> bytes:
        return export_module(source, inputs, opset=opset).model.SerializeToString()

    return Converted(
        exported,
        folded.records,
        folded.notes,
        folded.seconds,
        original,
        folded.module,
        folded.recalibrated,
        folded,
        original_onnx,
    )


def torchscript_to_onnx(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], opset: int, explicit: bool = False
) -> onnx.ModelProto:
    """Export a TorchScript module unfolded (constant folding off keeps every BatchNormalization), at opset 17
    at most unless ``opset`` was asked for (``explicit``)."""
    _check_runs(module, inputs)
    names = [f"input_{i}" for i in range(len(inputs))]
    with eval_mode(module):
        proto, _ = run_torchscript_exporter(
            module,
            inputs,
            opset_version=opset if explicit else min(opset, 17),
            do_constant_folding=False,
            input_names=names,
            dynamic_axes={name: {0: "batch"} for name in names},
        )
    return proto


def _check_runs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    """Run the module once, so that inputs it cannot take fail with its own message, not the exporter's."""
    with eval_mode(module), torch.no_grad():
        try:
            module(*inputs)
        except Exception as exc:  # a scripted forward raises whatever the model raises
            last = next((line.strip() for line in reversed(str(exc).splitlines()) if line.strip()), type(exc).__name__)
            raise InputSpecError(f"the model's forward failed on inputs {InputSpec.of(inputs).describe()}: "
                                 f"{last}; check --input-shape") from exc


def convert_onnx_level(
    loaded: LoadedModel,
    inputs: tuple[torch.Tensor, ...],
    opset: int,
    affine_form: str = "batchnorm",
    explicit: bool = False,
) -> Converted:
    """Fold on the ONNX graph: an ONNX file as it is, a TorchScript archive after an unfolded export."""
    from bnfold.fold.onnx import fold_onnx

    if loaded.format == "onnx":
        from bnfold.convert.onnx_input import check_onnx_input

        original: onnx.ModelProto = loaded.onnx_model  # type: ignore[assignment]
        check_onnx_input(original, loaded.path)
        exporter, used_opset = "none (ONNX input)", _opset_of(original)
    else:
        original = torchscript_to_onnx(loaded.module, inputs, opset, explicit)  # type: ignore[arg-type]
        exporter, used_opset = "torch.onnx.export (TorchScript)", _opset_of(original)
    start = time.perf_counter()
    result = fold_onnx(original, affine_form)
    seconds = time.perf_counter() - start
    remove_unused_initializers(result.model)
    exported = ExportResult(result.model, exporter, used_opset)
    reference: Any = original.SerializeToString() if loaded.format == "onnx" else loaded.module
    return Converted(
        exported, result.records, [], seconds, reference, None, original_onnx=lambda: original.SerializeToString()
    )


def _opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
