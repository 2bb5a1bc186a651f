"""Backward folds: a BatchNorm into the conv or linear that reads its output, and where that is refused."""

from __future__ import annotations

import pytest
from fold_models import bn_cls, check_fold, conv_cls, image, randn, randomise
from torch import nn

COPYING = ["reflect", "replicate", "circular"]


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("padding_mode", ["unpadded", *COPYING])
@pytest.mark.parametrize("groups", [1, 4])
def test_bn_then_conv_folds_backward(dim: int, padding_mode: str, groups: int) -> None:
    padding, mode = (0, "zeros") if padding_mode == "unpadded" else (1, padding_mode)
    conv = conv_cls(dim)(4, 8, 3, padding=padding, padding_mode=mode, groups=groups, bias=groups == 1)
    model = randomise(nn.Sequential(bn_cls(dim)(4, eps=1e-3, affine=dim != 3), conv), seed=30 + dim)
    result = check_fold(model, [image(dim, 4)], folded=1, onnx_export=(dim, padding_mode, groups) == (2, "reflect", 1))
    assert result.records[0].how == "backward" and result.records[0].into == ["1"]


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_zero_padding_refuses_backward_fold(dim: int) -> None:
    model = randomise(nn.Sequential(bn_cls(dim)(4), conv_cls(dim)(4, 8, 3, padding=1)), seed=40 + dim)
    result = check_fold(model, [image(dim, 4)], folded=0, exact=False, onnx_export=dim == 2)
    record = result.records[0]
    assert record.action == "affine"
    assert "1 pads its input with zeros" in record.reason and "border" in record.reason


def test_same_padding_with_1x1_kernel_folds_backward() -> None:
    model = randomise(nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 6, 1, padding="same")), seed=44)
    check_fold(model, [image(2, 4)], folded=1)


@pytest.mark.parametrize("bias", [True, False])
def test_bn_then_linear(bias: bool) -> None:
    layers = nn.BatchNorm1d(5), nn.Linear(5, 3, bias=bias), nn.ReLU(), nn.Linear(3, 2)
    model = randomise(nn.Sequential(*layers), seed=45)
    result = check_fold(model, [randn(6, 5)], folded=1, onnx_export=bias)
    assert result.records[0].into == ["1"]


@pytest.mark.parametrize("dropout", [nn.Dropout(0.3), nn.Dropout(0.3, inplace=True), nn.AlphaDropout(0.1)])
def test_a_dropout_between_bn_and_linear_is_looked_through_at_inference(dropout: nn.Module) -> None:
    """BatchNorm1d -> Dropout -> Linear, a common classifier head: at inference the dropout is the identity."""
    model = randomise(nn.Sequential(nn.BatchNorm1d(5), dropout, nn.Linear(5, 3)), seed=47)
    result = check_fold(model, [randn(6, 5)], folded=1, onnx_export=True)
    assert result.records[0].how == "backward" and result.records[0].into == ["2"]


def test_a_dropout2d_between_bn_and_conv_is_looked_through_at_inference() -> None:
    model = randomise(nn.Sequential(nn.BatchNorm2d(4), nn.Dropout2d(0.2), nn.Conv2d(4, 6, 3)), seed=48)
    result = check_fold(model, [image(2, 4)], folded=1, onnx_export=True)
    assert result.records[0].into == ["2"]


def test_bn_feeding_two_convs_folds_into_both() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn, self.a, self.b = nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 2, 3, bias=False)

        def forward(self, x):  # type: ignore[no-untyped-def]
            y = self.bn(x)
            return self.a(y), self.b(y)

    result = check_fold(randomise(TwoHeads(), seed=46), [image(2, 3)], folded=1)
    assert result.records[0].into == ["a", "b"]


def test_bn_relu_conv_is_not_folded() -> None:
    model = randomise(nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 1)), seed=47)
    result = check_fold(model, [image(2, 3)], folded=0, exact=False)
    reason = result.records[0].reason
    assert "its input comes from the model input" in reason and "which has no weights to fold into" in reason
    assert "its output feeds 1 (relu), which is not a conv or linear" in reason


def test_bn_then_transposed_conv_is_not_folded() -> None:
    model = randomise(nn.Sequential(nn.BatchNorm2d(3), nn.ConvTranspose2d(3, 4, 3, stride=2)), seed=48)
    result = check_fold(model, [image(2, 3)], folded=0, exact=False)
    assert "transposed conv 1" in result.records[0].reason
