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

from bnfold.convert.config import ConvertConfig
from bnfold.errors import ExportError, InputSpecError
from bnfold.export import (
    ExportResult,
    export_folded,
    export_module,
    remove_unused_initializers,
    run_torchscript_exporter,
)
from bnfold.fold import fold
from bnfold.fold.capture import eval_mode
from bnfold.fold.records import BnRecord
from bnfold.load import InputSpec, LoadedModel, load_data
from bnfold.load.inputs import dynamic_axes
from bnfold.verify.runners import drop_tensors

ONNX_LEVEL = ("onnx", "torchscript")
Batches = list[tuple[str, tuple[Any, ...]]]


@dataclass
class Converted:
    """A folded ONNX model with its records, and how to verify and time it against the original."""

    exported: ExportResult
    records: list[BnRecord]
    notes: list[str]
    fold_seconds: float
    original: Any  # an nn.Module; for an ONNX input, its file (or the model, when it was given in memory)
    _folded: Any  # the folded PyTorch module (None for the ONNX path), read as ``folded``
    recalibrated: bool = False
    refold: Callable[[], nn.Module] | None = None
    """Folds the model again (PyTorch models): makes ``folded`` anew once :meth:`release_folded` dropped it."""
    release_after_parity: bool = False
    """Whether parity lets the folded module go once its outputs are in (nothing after parity runs it)."""
    original_onnx: Callable[[], onnx.ModelProto | Path] | None = None  # the unfolded model: a new one, or its file
    warnings: list[str] = field(default_factory=list)

    @property
    def folded(self) -> Any:
        """The folded PyTorch module, folded again if it was released."""
        if self._folded is None and self.refold is not None:
            self._folded = self.refold()
        return self._folded

    @folded.setter
    def folded(self, module: Any) -> None:
        self._folded = module

    def release_folded(self) -> None:
        """Drop the folded PyTorch module (weights the size of the model's) once parity has its outputs, so
        that the onnxruntime sessions after it do not stack on it; reading ``folded`` folds again."""
        if self.refold is not None and self._folded is not None:
            module, self._folded = self._folded, None
            original = self.original if isinstance(self.original, nn.Module) else None
            drop_tensors(module, keep=original)  # ours, unreachable now: its weights go without the collector


def calibration_batches(path: Path, count: int, batch: int = 64) -> list[tuple[torch.Tensor, ...]]:
    """``--recalibrate`` data as batches of at most ``batch`` samples."""
    data = load_data(path, count, "--recalibrate")
    n = data[0].shape[0]
    return [tuple(t[i : i + batch].float() for t in data) for i in range(0, n, batch)]


def convert_torch(
    loaded: LoadedModel,
    inputs: tuple[torch.Tensor, ...],
    opset: int,
    config: ConvertConfig,
    scratch: Path | None = None,
) -> Converted:
    """Fold on the aten graph, then export the folded GraphModule.

    A torch.export archive is folded as stored, its dynamic dimensions kept, unless ``--input-shape`` or
    ``--dynamic`` asks for another trace; any other model is traced with ``config.dynamic`` (by default
    the batch) dynamic. The exported weights are written into a temporary folder in ``scratch`` (by default
    the system's)."""
    recalibrate = config.recalibrate
    calibration = calibration_batches(recalibrate, len(inputs)) if recalibrate else None
    retrace = bool(config.input_shapes) or config.dynamic is not None
    program = loaded.exported if not retrace else None
    source: nn.Module | torch.export.ExportedProgram | None = program if program is not None else loaded.module
    if source is None:
        raise ExportError(f"{loaded.path}: holds no runnable PyTorch model")
    axes = dynamic_axes(config.dynamic, inputs) if config.dynamic is not None else None
    folded = fold(source, inputs, calibration=calibration, affine_form=config.affine_form, dynamic_axes=axes)
    exported = export_folded(folded.module, inputs, exporter=config.exporter, opset=opset, weights_file=scratch or True)
    original = folded.reference or (program.module() if program is not None else source)
    if folded.reference is not None:
        folded.notes.append("parity reference: the original model with the re-estimated statistics, unfolded")

    def original_onnx() -> onnx.ModelProto:
        return export_module(source, inputs, opset=opset).model

    def refold() -> nn.Module:
        return fold(source, inputs, calibration=calibration, affine_form=config.affine_form, dynamic_axes=axes).module

    return Converted(
        exported,
        folded.records,
        folded.notes,
        folded.seconds,
        original,
        folded.module,
        folded.recalibrated,
        refold,
        not config.bench,
        original_onnx,
    )


def torchscript_to_onnx(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    opset: int,
    explicit: bool = False,
    axes: tuple[tuple[int, ...], ...] | None = None,
) -> onnx.ModelProto:
    """Export a TorchScript module unfolded (constant folding off keeps every BatchNormalization), at opset 17
    at most unless ``opset`` was asked for (``explicit``). Inputs keep the names of the forward's
    arguments; ``axes`` (default: the batch) are dynamic."""
    _check_runs(module, inputs)
    names = _argument_names(module, len(inputs))
    axes = axes if axes is not None else tuple((0,) if t.dim() else () for t in inputs)
    pairs = zip(names, axes, strict=True)
    dynamic = {name: {a: "batch" if a == 0 else f"{name}_dim{a}" for a in ax} for name, ax in pairs}
    with eval_mode(module):
        proto, _ = run_torchscript_exporter(
            module,
            inputs,
            opset_version=opset if explicit else min(opset, 17),
            do_constant_folding=False,
            input_names=names,
            dynamic_axes={name: dims for name, dims in dynamic.items() if dims},
        )
    return proto


def _argument_names(module: nn.Module, count: int) -> list[str]:
    """The names of a scripted forward's arguments (``input_0``, ... where it has none to give)."""
    try:
        schema: Any = module.forward.schema  # type: ignore[attr-defined]
        names = [a.name for a in schema.arguments][1:]
    except (AttributeError, RuntimeError):
        names = []
    return names[:count] if len(names) >= count else [f"input_{i}" for i in range(count)]


def _check_runs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    """Run the module once, so that inputs it cannot take fail with its own message, not the exporter's."""
    with eval_mode(module), torch.no_grad():
        try:
            module(*inputs)
        except Exception as exc:  # a scripted forward raises whatever the model raises
            last = next((line.strip() for line in reversed(str(exc).splitlines()) if line.strip()), type(exc).__name__)
            raise InputSpecError(
                f"the model's forward failed on inputs {InputSpec.of(inputs).describe()}: {last}; check --input-shape"
            ) from exc


def convert_onnx_level(
    loaded: LoadedModel, inputs: tuple[torch.Tensor, ...], opset: int, config: ConvertConfig
) -> Converted:
    """Fold on the ONNX graph: an ONNX file as it is, a TorchScript archive after an unfolded export."""
    affine_form, explicit = config.affine_form, config.opset is not None
    axes = dynamic_axes(config.dynamic, inputs) if config.dynamic is not None else None
    from bnfold.fold.onnx import fold_onnx

    if loaded.format == "onnx":
        from bnfold.convert.onnx_input import check_onnx_input, check_onnx_options

        original: onnx.ModelProto = loaded.onnx_model  # type: ignore[assignment]
        check_onnx_options(config, original)
        check_onnx_input(original, loaded.path)
        exporter, used_opset = "none (ONNX input)", _opset_of(original)
    else:
        original = torchscript_to_onnx(loaded.module, inputs, opset, explicit, axes)  # type: ignore[arg-type]
        exporter, used_opset = "torch.onnx.export (TorchScript)", _opset_of(original)
    start = time.perf_counter()
    result = fold_onnx(original, affine_form)
    seconds = time.perf_counter() - start
    remove_unused_initializers(result.model)
    exported = ExportResult(result.model, exporter, used_opset)
    unfolded: onnx.ModelProto | Path = loaded.path if loaded.format == "onnx" and loaded.path else original
    reference: Any = unfolded if loaded.format == "onnx" else loaded.module
    return Converted(exported, result.records, [], seconds, reference, None, original_onnx=lambda: _copy(unfolded))


def _copy(model: onnx.ModelProto | Path) -> onnx.ModelProto | Path:
    if isinstance(model, Path):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
