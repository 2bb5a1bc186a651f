"""Layers whose weight the model computes from its parameters on every call (weight standardisation, weight
normalisation, a pruning mask): the weight is a constant, evaluated once, and a BN beside the layer folds
into it, recorded under the layer's module path. A BatchNorm call that standardises a weight (timm's
``StdConv2d``) is part of that computation, not a BatchNorm of the model."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from fold_models import assert_matches, randomise, reference
from torch import nn
from torch.nn.utils import parametrizations

import bnfold
from bnfold.fold import fold


class VarMeanStdConv(nn.Conv2d):
    """BiT's weight-standardised conv, written with ``var_mean``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
        weight = (self.weight - mean) / torch.sqrt(var + 1e-10)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BatchNormStdConv(nn.Conv2d):
    """timm's ``StdConv2d``: the weight standardised by ``F.batch_norm`` over each output channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.weight.reshape(1, self.out_channels, -1)
        weight = F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class MaskedConv(nn.Conv2d):
    def __init__(self, *args: int, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer(
            "mask", (torch.rand(self.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5).float()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)


def _stem(conv: nn.Module) -> nn.Module:
    model = nn.Sequential()
    model.add_module("stem_conv", conv)
    model.add_module("stem_bn", nn.BatchNorm2d(5))
    model.add_module("act", nn.ReLU())
    return randomise(model, seed=2)


LAYERS = {
    "var_mean standardised": lambda: VarMeanStdConv(4, 5, 3, padding=1, bias=False),
    "batch_norm standardised (timm)": lambda: BatchNormStdConv(4, 5, 3, padding=1, bias=False),
    "weight_norm": lambda: parametrizations.weight_norm(nn.Conv2d(4, 5, 3, padding=1)),
    "spectral_norm": lambda: parametrizations.spectral_norm(nn.Conv2d(4, 5, 3, padding=1)),
    "masked": lambda: MaskedConv(4, 5, 3, padding=1),
}


@pytest.mark.parametrize("layer", list(LAYERS))
def test_a_bn_folds_into_a_layer_whose_weight_is_computed(layer: str) -> None:
    torch.manual_seed(0)
    model = _stem(LAYERS[layer]())
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    result = fold(model, (x,))
    assert [(r.name, r.action, r.into) for r in result.records] == [("stem_bn", "folded", ["stem_conv"])]
    with torch.no_grad():
        assert_matches(result.module(x), reference(model, (x,)))


def test_a_bn_folds_backward_into_a_standardised_conv() -> None:
    model = randomise(nn.Sequential(nn.BatchNorm2d(4), VarMeanStdConv(4, 5, 3)), seed=3)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    result = fold(model, (x,))
    assert [(r.name, r.action, r.how, r.into) for r in result.records] == [("0", "folded", "backward", ["1"])]
    with torch.no_grad():
        assert_matches(result.module(x), reference(model, (x,)))


def test_weight_standardisation_by_batch_norm_is_no_batchnorm_of_the_model(tmp_path: Path) -> None:
    """timm's StdConv2d beside one BN: one BatchNorm found and folded, none left in the ONNX file (the weight
    is computed once, not on every inference), and the output matches a float64 run of the original."""
    model = _stem(LAYERS["batch_norm standardised (timm)"]())
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    config = bnfold.ConvertConfig(output=tmp_path / "m.onnx", bench=False)
    report = bnfold.convert(model, config, example_inputs=(x,)).report
    assert (report.fold.batchnorm_found, report.fold.batchnorm_folded) == (1, 1)
    assert report.parity is not None and report.parity.passed
    ops = [node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert ops == ["Conv", "Relu"]
