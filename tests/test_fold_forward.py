"""Forward folds: a BatchNorm into the conv, transposed conv or linear that produces its input."""

from __future__ import annotations

import pytest
import torch
from fold_models import (
    ACBlock,
    ChannelsLast,
    MixConv,
    RepVGGBlock,
    ReusedConv,
    bn_cls,
    check_fold,
    conv_cls,
    image,
    randn,
    randomise,
)
from torch import nn

from bnfold.fold.eager import overload_of
from bnfold.fold.graph import fetch

GROUPS = {"dense": 1, "grouped": 2, "depthwise": 4}
PADDING_MODES = ["zeros", "reflect", "replicate", "circular"]


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("groups", GROUPS)
@pytest.mark.parametrize(("bias", "affine"), [(True, True), (False, True), (True, False)])
def test_conv_then_bn(dim: int, groups: str, bias: bool, affine: bool) -> None:
    g = GROUPS[groups]
    mode = PADDING_MODES[(dim + g + bias + affine) % 4]
    eps = 1e-5 if affine else 1e-2
    conv = conv_cls(dim)(
        4, 8, 3, stride=1 + bias, padding=1, dilation=1 + (not bias), groups=g, bias=bias, padding_mode=mode
    )
    model = randomise(nn.Sequential(conv, bn_cls(dim)(8, eps=eps, affine=affine)), seed=dim)
    export = (dim, g, bias, affine) == (2, 2, True, True)
    result = check_fold(model, [image(dim, 4, size=7)], folded=1, onnx_export=export)
    assert result.records[0].into == ["0"] and result.records[0].how == "forward"


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("groups", GROUPS)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose_then_bn(dim: int, groups: str, bias: bool) -> None:
    g = GROUPS[groups]
    conv = conv_cls(dim, transposed=True)(
        4, 4 * (1 + (g == 2)), 3, stride=2, padding=1, output_padding=1, groups=g, bias=bias
    )
    model = randomise(nn.Sequential(conv, bn_cls(dim)(conv.out_channels, eps=1e-3)), seed=10 + dim)
    check_fold(model, [image(dim, 4, size=4)], folded=1, onnx_export=(dim, g, bias) == (2, 4, False))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_linear_then_bn1d(bias: bool, affine: bool) -> None:
    model = randomise(nn.Sequential(nn.Linear(5, 6, bias=bias), nn.BatchNorm1d(6, affine=affine)), seed=20)
    check_fold(model, [randn(8, 5)], folded=1, onnx_export=bias and affine)


def test_conv_bn_bn_chain_folds_both() -> None:
    layers = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4, eps=1e-2)
    model = randomise(nn.Sequential(*layers), seed=21)
    result = check_fold(model, [image(2, 3)], folded=2)
    assert [r.into for r in result.records] == [["0"], ["0"]]


@pytest.mark.parametrize("layer", ["linear", "conv1x1"])
@pytest.mark.parametrize("permute", [False, True])
def test_channels_last_through_transpose(layer: str, permute: bool) -> None:
    model = randomise(ChannelsLast(layer=layer, permute=permute), seed=22)
    result = check_fold(model, [randn(2, 7, 5)], folded=1, onnx_export=(layer, permute) == ("linear", False))
    assert result.records[0].into == ["layer"]


def test_branch_sum_folds_into_every_branch() -> None:
    result = check_fold(randomise(ACBlock(), seed=23), [image(2, 3)], folded=1, onnx_export=True)
    assert result.records[0].how == "branches" and result.records[0].into == ["square", "hor", "ver"]


def test_concatenation_folds_each_slice() -> None:
    result = check_fold(randomise(MixConv(), seed=24), [image(2, 3)], folded=1, onnx_export=True)
    assert result.records[0].how == "concat" and result.records[0].into == ["small", "large"]


@pytest.mark.parametrize("groups", [1, 2])
def test_repvgg_block_folds_to_one_conv(groups: int) -> None:
    result = check_fold(
        randomise(RepVGGBlock(groups=groups), seed=25), [image(2, 4)], folded=3, onnx_export=groups == 1
    )
    how = {r.name: r.how for r in result.records}
    assert how == {"bn3": "forward", "bn1": "forward", "identity": "identity"}
    convs = [n for n in result.module.graph.nodes if overload_of(n.target) == torch.ops.aten.conv2d.default]
    adds = [n for n in result.module.graph.nodes if overload_of(n.target) == torch.ops.aten.add.Tensor]
    assert len(convs) == 2 and len(adds) == 1  # the identity went into conv3; conv1 is still its own branch


def test_reused_module_gets_a_dedicated_copy() -> None:
    model = randomise(ReusedConv(), seed=26)
    original = model.conv.weight.detach().clone()
    result = check_fold(model, [image(2, 3)], folded=1, onnx_export=True)
    convs = [n for n in result.module.graph.nodes if overload_of(n.target) == torch.ops.aten.conv2d.default]
    weights = [fetch(result.module, str(c.args[1].target)) for c in convs]
    assert len(convs) == 2 and convs[0].args[1] is not convs[1].args[1]
    assert not torch.equal(weights[0], original) and torch.equal(weights[1], original)
    assert torch.equal(model.conv.weight, original)


class ConcatAlongHeight(nn.Module):
    """Two convs stacked along the height axis, then one BN: each conv takes the whole affine."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.cat([self.a(x), self.b(x)], 2))


def test_concatenation_along_another_axis_folds_into_every_piece() -> None:
    result = check_fold(randomise(ConcatAlongHeight(), seed=27), [image(2, 3)], folded=1, onnx_export=True)
    assert (result.records[0].how, result.records[0].into) == ("concat", ["a", "b"])


def test_a_conv_sharing_its_weight_with_another_is_named_as_the_module_called() -> None:
    """``b.weight = a.weight`` and a BN after ``a``: torch.export keeps the weight under one name (``b``'s), but
    the record names ``a``, the conv whose output the BN reads; the numbers match the fp64 original."""
    from fold_registry import TiedConvs

    result = check_fold(randomise(TiedConvs(), seed=33), [image(2, 3)], folded=1)
    assert [(r.name, r.how, r.into) for r in result.records] == [("bn", "forward", ["a"])]
