"""The identity-branch rule (``bnfold/fold/rules/identity.py``) through both graph adapters: a multi-branch
block whose identity BN sits beside a nested sum of convs folds to one conv from an FX graph and from an ONNX
graph, with the same records, against a float64 reference; a conv that cannot take the identity keeps it."""

from __future__ import annotations

import io

import onnx
import torch
from fold_models import assert_matches, aten_batchnorms, image, randomise, reference
from torch import nn

from bnfold.export import quiet
from bnfold.fold import fold
from bnfold.fold.onnx import fold_onnx
from bnfold.fold.onnx.testing import assert_numerically_equal
from bnfold.fold.reasons import kinds


class ThreeBranches(nn.Module):
    """MobileOne-like: bn3(conv3(x)) + bn1(conv1(x)) + bn(x), in place."""

    def __init__(self, kernel: int = 3, padding: int | str = 1, one_by_one: bool = True) -> None:
        super().__init__()
        self.one_by_one = one_by_one
        self.conv3 = nn.Conv2d(4, 4, kernel, padding=padding, groups=2, bias=False)
        self.bn3 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 4, 1, groups=2, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv3(x))
        if self.one_by_one:
            y += self.bn1(self.conv1(x))
        y += self.bn(x)
        return torch.relu(y)


def _onnx(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with quiet(), torch.no_grad():
        torch.onnx.export(model, inputs, buffer, dynamo=False, do_constant_folding=False)
    return onnx.load_from_string(buffer.getvalue())


def _check_onnx(model: onnx.ModelProto, inputs: tuple[torch.Tensor, ...], expected: torch.Tensor) -> None:
    feeds = {i.name: x.numpy() for i, x in zip(model.graph.input, inputs, strict=False)}
    assert_numerically_equal(model, feeds, [expected.numpy()])


def test_identity_beside_a_nested_sum_folds_alike_from_fx_and_onnx() -> None:
    model = randomise(ThreeBranches(), seed=5)
    inputs = (image(2, 4, size=5),)
    expected = reference(model, inputs)
    fx_result = fold(model, inputs)
    onnx_result = fold_onnx(_onnx(model, inputs))
    for records in (fx_result.records, onnx_result.records):
        assert {r.name: (r.action, r.how, r.into) for r in records} == {
            "bn3": ("folded", "forward", ["conv3"]),
            "bn1": ("folded", "forward", ["conv1"]),
            "bn": ("folded", "identity", ["conv3"]),
        }
    assert aten_batchnorms(fx_result.module) == 0
    with torch.no_grad():
        assert_matches(fx_result.module(*inputs), expected)
    ops = [node.op_type for node in onnx_result.model.graph.node]
    assert "BatchNormalization" not in ops and "Mul" not in ops
    _check_onnx(onnx_result.model, inputs, expected)  # type: ignore[arg-type]


def test_the_identity_goes_into_the_conv_that_can_take_it() -> None:
    model = randomise(ThreeBranches(kernel=2, padding="same"), seed=6)
    inputs = (image(2, 4, size=5),)
    expected = reference(model, inputs)
    result = fold(model, inputs)
    assert {r.name: (r.action, r.how, r.into) for r in result.records}["bn"] == ("folded", "identity", ["conv1"])
    with torch.no_grad():
        assert_matches(result.module(*inputs), expected)


def test_an_even_kernel_keeps_the_identity_with_its_reason() -> None:
    model = randomise(ThreeBranches(kernel=2, padding="same", one_by_one=False), seed=6)
    inputs = (image(2, 4, size=5),)
    expected = reference(model, inputs)
    result = fold(model, inputs)
    record = next(r for r in result.records if r.name == "bn")
    assert record.action == "affine"
    assert kinds(record.reason)[1] == "identity"
    assert "conv3 is not a centred odd kernel with 'same' padding" in str(record.reason)
    with torch.no_grad():
        assert_matches(result.module(*inputs), expected)
