"""The ONNX graph bnfold writes for one model from each input format a user can bring, with a dynamic batch:
a torch.export program (``.pt2``: fold on the aten graph, then export), a TorchScript module (exported
unfolded, folded on the ONNX graph) and an ONNX file from the dynamo exporter without its optimizer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from fold_models import assert_matches
from torch import nn

from bnfold.convert.paths import torchscript_to_onnx
from bnfold.export import export_folded, export_module, quiet
from bnfold.fold import fold
from bnfold.fold.onnx import fold_onnx

FORMATS = (".pt2", "TorchScript", "ONNX")


def written(model: nn.Module, inputs: tuple[torch.Tensor, ...], fmt: str) -> onnx.ModelProto:
    """bnfold's ONNX output for ``model`` given as ``fmt``, batch dynamic."""
    with torch.no_grad():
        if fmt == ".pt2":
            batch = {0: torch.export.Dim("batch", min=1)}
            program = torch.export.export(model, inputs, dynamic_shapes=tuple(batch for _ in inputs))
            return export_folded(fold(program, inputs).module, inputs).model
        if fmt == "TorchScript":
            with quiet():
                traced = torch.jit.trace(model, inputs)
            return fold_onnx(torchscript_to_onnx(traced, inputs, 18)).model
        return fold_onnx(export_module(model, inputs, optimize=False).model).model


def ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def run(model: onnx.ModelProto, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    return list(session.run(None, feeds))


def assert_equals_reference(model: onnx.ModelProto, original: nn.Module, inputs: Sequence[torch.Tensor]) -> None:
    """The written graph's outputs against the original module run in float64, within fp32 tolerance."""
    twin = original.double().eval()
    with torch.no_grad():
        expected = twin(*(x.double() for x in inputs))
    original.float()
    assert_matches([torch.from_numpy(a) for a in run(model, inputs)], expected)
