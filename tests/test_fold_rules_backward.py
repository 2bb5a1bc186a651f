"""The backward rule (``bnfold/fold/rules/backward.py``) through both graph adapters: a BN read through a
permute by a linear layer folds into it from an FX graph and from an ONNX graph alike; a Gemm that scales its
product (α ≠ 1) takes the shift scaled too; a zero-padded conv keeps the BN, saying so from both; each
against a float64 reference."""

from __future__ import annotations

import io

import numpy as np
import onnx
import torch
from fold_models import assert_matches, aten_batchnorms, image, randomise, reference
from onnx import helper as oh
from torch import nn

from bnfold.export import quiet
from bnfold.fold import fold
from bnfold.fold.onnx import fold_onnx
from bnfold.fold.onnx.testing import assert_numerically_equal, bn_node, bn_params, bn_ref, make_model
from bnfold.fold.reasons import kinds


class NormThenChannelsLast(nn.Module):
    """relu → BatchNorm1d over (N, C, L) → transpose to (N, L, C) → Linear over C."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(torch.relu(x)).transpose(1, 2))


def _onnx(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with quiet(), torch.no_grad():
        torch.onnx.export(model, inputs, buffer, dynamo=False, do_constant_folding=False)
    return onnx.load_from_string(buffer.getvalue())


def test_backward_through_a_permute_folds_alike_from_fx_and_onnx() -> None:
    model = randomise(NormThenChannelsLast(), seed=7)
    inputs = (torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(7)),)
    expected = reference(model, inputs)
    fx_result = fold(model, inputs)
    onnx_model = _onnx(model, inputs)
    onnx_result = fold_onnx(onnx_model)
    for records in (fx_result.records, onnx_result.records):
        assert [(r.name, r.action, r.how, r.into) for r in records] == [("bn", "folded", "backward", ["fc"])]
    assert aten_batchnorms(fx_result.module) == 0
    with torch.no_grad():
        assert_matches(fx_result.module(*inputs), expected)
    assert "BatchNormalization" not in [node.op_type for node in onnx_result.model.graph.node]
    feeds = {onnx_model.graph.input[0].name: inputs[0].numpy()}
    assert_numerically_equal(onnx_result.model, feeds, [expected.numpy()])  # type: ignore[union-attr]


def test_backward_into_a_gemm_with_alpha_and_beta() -> None:
    gen = np.random.default_rng(8)
    inits = bn_params("bn", 4, gen)
    inits["B"] = gen.standard_normal((3, 4)).astype(np.float32)
    inits["C"] = gen.standard_normal(3).astype(np.float32)
    nodes = [
        oh.make_node("Relu", ["x"], ["r"]),
        bn_node("bn", "r", "h"),
        oh.make_node("Gemm", ["h", "B", "C"], ["y"], name="fc", alpha=0.5, beta=2.0, transB=1),
    ]
    model = make_model(nodes, {"x": [2, 4]}, ["y"], inits)
    x = gen.standard_normal((2, 4)).astype(np.float32)
    h = bn_ref(np.maximum(x, 0).astype(np.float64), inits, "bn")
    expected = 0.5 * h @ inits["B"].T.astype(np.float64) + 2.0 * inits["C"].astype(np.float64)
    result = fold_onnx(model)
    assert [(r.action, r.how, r.into) for r in result.records] == [("folded", "backward", ["fc"])]
    assert [node.op_type for node in result.model.graph.node] == ["Relu", "Gemm"]
    assert_numerically_equal(result.model, {"x": x}, [expected])


def test_zero_padding_keeps_the_bn_from_fx_and_onnx() -> None:
    model = randomise(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3), nn.Conv2d(3, 2, 3, padding=1)), seed=9)
    inputs = (image(2, 3, size=5),)
    expected = reference(model, inputs)
    fx_result = fold(model, inputs)
    onnx_result = fold_onnx(_onnx(model, inputs))
    for records in (fx_result.records, onnx_result.records):
        assert [(r.name, r.action) for r in records] == [("1", "affine")]
        assert kinds(records[0].reason)[-1] == "zero_padding"
    assert "2 pads its input with zeros (padding=[1, 1])" in str(fx_result.records[0].reason)
    assert "2 pads its input with zeros (pads=[1, 1, 1, 1])" in str(onnx_result.records[0].reason)
    with torch.no_grad():
        assert_matches(fx_result.module(*inputs), expected)
