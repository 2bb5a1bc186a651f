"""Everything that computes a BatchNorm: functional calls, FrozenBatchNorm2d, SyncBatchNorm, lazy modules,
hand-written per-channel Mul/Add, and subclasses whose forward does more than normalise."""

from __future__ import annotations

import pytest
import torch
from fold_models import (
    BNThenGain,
    BNThenReLU,
    BNThenSquash,
    ChannelScale,
    FrozenBatchNorm2d,
    FunctionalBN,
    assert_matches,
    aten_batchnorms,
    check_fold,
    constant_affines,
    image,
    randn,
    randomise,
    reference,
)
from fold_registry import ChannelGain, LinearScale, SharedChannelScale
from torch import nn

from bnfold.fold import fold
from bnfold.fold.constants import fold_constants
from bnfold.fold.eager import overload_of

aten = torch.ops.aten


@pytest.mark.parametrize("aten_call", [False, True])
def test_functional_batch_norm_on_buffers(aten_call: bool) -> None:
    result = check_fold(FunctionalBN(aten_call).eval(), [image(2, 3)], folded=1, onnx_export=not aten_call)
    assert result.records[0].name == "batch_norm" and result.records[0].into == ["conv"]


def test_frozen_batchnorm_is_constant_folded_then_folded() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), FrozenBatchNorm2d(4)).eval()
    result = check_fold(model, [image(2, 3)], folded=0, found=0, onnx_export=True)  # a Mul/Add, not a BN call
    record = result.records[0]
    assert (record.name, record.kind, record.op, record.action, record.into) == (
        "1",
        "FrozenBatchNorm2d",
        "muladd",
        "folded",
        ["0"],
    )
    assert any("as constants" in note for note in result.notes)


def test_sync_batchnorm_in_eval_is_a_batchnorm() -> None:
    model = randomise(nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4)), seed=50)
    result = check_fold(model, [image(2, 3)], folded=1)
    assert result.records[0].kind == "SyncBatchNorm"


def test_materialised_lazy_batchnorm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LazyBatchNorm2d())
    model(image(2, 3))  # materialise
    check_fold(randomise(model, seed=51), [image(2, 3)], folded=1)


def test_per_channel_mul_add_after_conv() -> None:
    result = check_fold(ChannelScale().eval(), [image(2, 3)], folded=0, found=0, onnx_export=True)
    record = result.records[0]
    assert (record.kind, record.op, record.action, record.into) == ("Mul/Add", "muladd", "folded", ["conv"])


def test_bn_subclass_keeps_its_activation() -> None:
    model = randomise(nn.Sequential(nn.Conv2d(3, 4, 3), BNThenReLU(4)), seed=52)
    result = check_fold(model, [image(2, 3)], folded=1)
    assert [overload_of(n.target) for n in result.module.graph.nodes if n.op == "call_function"] == [
        aten.conv2d.default,
        aten.relu.default,
    ]


def test_bn_subclass_gain_folds_too() -> None:
    model = randomise(nn.Sequential(nn.Conv2d(3, 4, 3), BNThenGain(4)), seed=53)
    result = check_fold(model, [image(2, 3)], folded=1, found=1, onnx_export=True)  # the gain is a Mul
    assert [(r.name, r.op, r.action, r.into) for r in result.records] == [
        ("1", "batchnorm", "folded", ["0"]),
        ("1 (mul)", "muladd", "folded", ["0"]),
    ]


def test_bn_subclass_keeps_what_follows_the_normalisation() -> None:
    model = randomise(nn.Sequential(nn.Conv2d(3, 4, 3), BNThenSquash(4)), seed=54)
    result = check_fold(model, [image(2, 3)], folded=1, found=1, exact=False)
    assert aten_batchnorms(result.module) == 0
    targets = [overload_of(n.target) for n in result.module.graph.nodes if n.op == "call_function"]
    assert targets == [
        aten.conv2d.default,
        aten.mul.Tensor,
        aten.add.Tensor,
        aten.sigmoid.default,
        aten.mul.Tensor,
    ]


class StoredAndRandom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("a", torch.linspace(0.0, 1.0, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.a * 2).exp() + torch.rand_like(self.a) + x.sum() * self.a


def test_constant_folding_evaluates_only_pure_calls_on_stored_tensors() -> None:
    model = StoredAndRandom()
    gm = torch.export.export(model, (torch.ones(3),)).module()
    assert fold_constants(gm) == 2  # a * 2, then its exp
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert aten.exp.default not in targets
    assert aten.rand_like.default in targets and aten.sum.default in targets
    x = torch.randn(3)
    torch.manual_seed(0)
    expected = model(x)
    torch.manual_seed(0)
    torch.testing.assert_close(gm(x), expected)


def test_decomposed_program_with_native_batch_norm() -> None:
    model = randomise(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)), seed=55
    )
    x = image(2, 3)
    program = torch.export.export(model, (x,)).run_decompositions()
    assert aten._native_batch_norm_legit_no_training.default in {n.target for n in program.graph.nodes}
    result = fold(program)
    assert [(r.name, r.how) for r in result.records] == [("1", "forward"), ("3", "backward")]
    assert aten_batchnorms(result.module) == 0
    with torch.no_grad():
        assert_matches(result.module(x), reference(model, [x]))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.bn(self.conv(x))
        return {"mean": y.mean((2, 3)), "max": y.amax((2, 3))}


@pytest.mark.parametrize(
    ("model", "plain"),
    [(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), True), (TwoHeads(), False)],
)
def test_plain_signatures_skip_pytree_and_structured_ones_keep_it(model: nn.Module, plain: bool) -> None:
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    folded = fold(model, (x,)).module
    assert ("tree_unflatten" not in folded.code) == plain
    with torch.no_grad():
        expected, got = model(x), folded(x)
    if plain:
        assert isinstance(got, torch.Tensor)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    else:
        assert isinstance(got, dict) and got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5)


def test_a_mul_add_that_cannot_fold_is_listed_as_written_and_not_counted() -> None:
    """Recorded as the ONNX inputs record it; '1/1 BatchNorms folded', not '1/2': it is no BN left behind."""
    model = randomise(SharedChannelScale(), seed=27)
    result = check_fold(model, [image(2, 3)], folded=1, found=1, exact=False)
    assert [(r.name, r.op, r.action) for r in result.records] == [
        ("bn", "batchnorm", "folded"),
        ("mul", "muladd", "affine"),
    ]
    assert result.records[1].describe().startswith("mul → Mul/Add left as written: cannot fold forward: ")
    assert result.counts == {"found": 1, "folded": 1, "affine": 0, "kept": 0}
    assert constant_affines(result.module) == 2 and aten_batchnorms(result.module) == 0  # its Mul and its Add


@pytest.mark.parametrize(
    ("model", "x"), [(ChannelGain(), image(2, 3)), (LinearScale(), randn(2, 7, 5))], ids=["gain", "linear"]
)
def test_a_layer_scale_folds_into_its_layer(model: nn.Module, x: torch.Tensor) -> None:
    """A Mul alone after a conv, and a Mul/Add along a linear layer's features (its last axis)."""
    result = check_fold(randomise(model, seed=55), [x], folded=0, found=0, onnx_export=True)  # no BatchNorm
    assert [(r.op, r.action, r.how) for r in result.records] == [("muladd", "folded", "forward")]
    calls = [overload_of(n.target) for n in result.module.graph.nodes if n.op == "call_function"]
    assert aten.mul.Tensor not in calls and aten.add.Tensor not in calls, calls
