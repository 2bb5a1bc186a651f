"""The report's sections a conversion fills: the model read, the fold, and the ONNX file written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bnfold.convert.paths import Converted
from bnfold.export.passes import merged_convs
from bnfold.fold.records import BnRecord, summarise
from bnfold.load import LoadedModel
from bnfold.report.document import FoldSection, ModelInput, ModelSection, OnnxSection


def fold_section(converted: Converted, affine_form: str = "batchnorm") -> FoldSection:
    """``fold``: the counts, and a copy of every BatchNorm's record."""
    counts = summarise(converted.records)
    return FoldSection(
        batchnorm_found=counts["found"],
        batchnorm_folded=counts["folded"],
        batchnorm_affine=counts["affine"],
        batchnorm_kept=counts["kept"],
        recalibrated=converted.recalibrated,
        affine_form=affine_form,
        seconds=round(converted.fold_seconds, 3),
        layers=[BnRecord(**r.to_json()) for r in converted.records],
    )


def model_section(
    loaded: LoadedModel, inputs: tuple[torch.Tensor, ...], notes: list[str], graph: Any = None
) -> ModelSection:
    """The ``model`` block: the input file and its inputs, named and with their dynamic axes as the ONNX
    ``graph`` written (or read) has them."""
    declared = onnx_inputs(graph if graph is not None else loaded.onnx_model)
    entries = []
    for i, tensor in enumerate(inputs):
        name, axes = declared[i] if i < len(declared) else (f"input_{i}", [])
        dtype = str(tensor.dtype).replace("torch.", "")
        entries.append(ModelInput(name, list(tensor.shape), dtype, axes))
    return ModelSection(
        path=str(loaded.path) if loaded.path else None,
        sha256=loaded.sha256,
        format=loaded.format,
        inputs=entries,
        notes=list(loaded.notes) + notes,
    )


def onnx_inputs(model: Any) -> list[tuple[str, list[int]]]:
    """Each graph input of an ONNX model (initializers aside): its name and the axes it declares symbolic."""
    if model is None:
        return []
    stored = {init.name for init in model.graph.initializer}
    return [
        (value.name, [i for i, d in enumerate(value.type.tensor_type.shape.dim) if not d.HasField("dim_value")])
        for value in model.graph.input
        if value.name not in stored
    ]


def onnx_section(converted: Converted, path: Path, external_data: Path | None = None) -> OnnxSection:
    """``onnx`` for the file about to be written; its sizes and hashes are filled once it is."""
    exported = converted.exported
    return OnnxSection(
        path=str(path),
        external_data=str(external_data) if external_data else None,
        exporter=exported.exporter,
        opset=exported.opset,
        batchnorm_nodes=exported.batchnorm_nodes(),
        nodes=len(exported.model.graph.node),
        extra={"merged_convs": merged_convs(exported.model)},
    )
