"""The forward rule (``bnfold/fold/rules/forward.py``), run through both graph adapters: the same tree of
bias adds, branch sums, concatenations and permutes folds from a torch FX graph and from an ONNX graph, with
the same records, and both match a float64 reference of the original model."""

from __future__ import annotations

import io

import onnx
import pytest
import torch
from fold_models import assert_matches, aten_batchnorms, image, randomise, reference
from torch import nn

from bnfold.export import quiet
from bnfold.fold import fold
from bnfold.fold.onnx import fold_onnx
from bnfold.fold.onnx.testing import assert_numerically_equal
from bnfold.fold.reasons import kinds


class ConcatPlusConv(nn.Module):
    """bn(cat([a(x), b(x)], 1) + c(x)): a concatenation inside a branch sum."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 3, padding=1)
        self.b = nn.Conv2d(3, 3, 1, bias=False)
        self.c = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.cat([self.a(x), self.b(x)], 1) + self.c(x))


class PermutedSum(nn.Module):
    """A channels-last sum of two linears, permuted to channels-first for a BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Linear(4, 6)
        self.q = nn.Linear(4, 6, bias=False)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn((self.p(x) + self.q(x)).transpose(1, 2)).transpose(1, 2)


class SharedSummand(nn.Module):
    """bn(a(x) + b(x)) where b(x) is also an output: the sum cannot absorb the BN."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        side = self.b(x)
        return self.bn(self.a(x) + side), side


def _onnx(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with quiet(), torch.no_grad():
        torch.onnx.export(model, inputs, buffer, dynamo=False, do_constant_folding=False)
    return onnx.load_from_string(buffer.getvalue())


def _outputs(expected: object) -> list[torch.Tensor]:
    return list(expected) if isinstance(expected, (tuple, list)) else [expected]  # type: ignore[list-item]


CASES = [
    (ConcatPlusConv, (image(2, 3, size=5),), "branches", ["a", "b", "c"]),
    (PermutedSum, (torch.randn(2, 7, 4, generator=torch.Generator().manual_seed(1)),), "branches", ["p", "q"]),
]


@pytest.mark.parametrize(("cls", "inputs", "how", "into"), CASES, ids=[c[0].__name__ for c in CASES])
def test_tree_folds_alike_from_fx_and_onnx(
    cls: type[nn.Module], inputs: tuple[torch.Tensor, ...], how: str, into: list[str]
) -> None:
    model = randomise(cls(), seed=3)
    expected = reference(model, inputs)
    fx_result = fold(model, inputs)
    onnx_result = fold_onnx(_onnx(model, inputs))
    for records in (fx_result.records, onnx_result.records):
        assert [(r.name, r.action, r.how, r.into) for r in records] == [("bn", "folded", how, into)]
    assert aten_batchnorms(fx_result.module) == 0
    with torch.no_grad():
        assert_matches(fx_result.module(*inputs), expected)
    ops = [node.op_type for node in onnx_result.model.graph.node]
    assert "BatchNormalization" not in ops and "Mul" not in ops
    feeds = {i.name: x.numpy() for i, x in zip(onnx_result.model.graph.input, inputs, strict=False)}
    assert_numerically_equal(onnx_result.model, feeds, [t.numpy() for t in _outputs(expected)])


def test_shared_summand_is_refused_alike() -> None:
    model = randomise(SharedSummand(), seed=4)
    inputs = (image(2, 3, size=4),)
    expected = reference(model, inputs)
    fx_result = fold(model, inputs)
    onnx_result = fold_onnx(_onnx(model, inputs))
    for records in (fx_result.records, onnx_result.records):
        assert [(r.name, r.action) for r in records] == [("bn", "affine")]
        assert kinds(records[0].reason) == ["shared", "model_output"]
    assert "the output of b also feeds the model output" in str(fx_result.records[0].reason)
    with torch.no_grad():
        assert_matches(fx_result.module(*inputs), expected)
