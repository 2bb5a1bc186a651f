"""The sweeps of ``bnfold/fold/sweeps.py`` (removal, forward, identity, backward in reverse order, freezing)
run alike through both graph adapters: a chain BN → BN → conv folds completely backward, a BN nothing reads
is removed, and a BN no rule can fold is frozen in either form, each with the same records from an FX graph
and from an ONNX graph, against a float64 reference."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from fold_models import assert_matches, aten_batchnorms, image, randomise, reference
from onnx import helper as oh
from torch import nn

from bnfold.export import quiet
from bnfold.fold import fold
from bnfold.fold.onnx import fold_onnx
from bnfold.fold.onnx.testing import assert_numerically_equal, bn_node, bn_params, make_model
from bnfold.fold.records import BnRecord


class DeadBranch(nn.Module):
    """conv → BN; a second BN on the input whose value nothing uses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.unused = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.unused(x)
        return self.bn(self.conv(x))


def _onnx(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with quiet(), torch.no_grad():
        torch.onnx.export(model, inputs, buffer, dynamo=False, do_constant_folding=False)
    return onnx.load_from_string(buffer.getvalue())


def _summary(records: list[BnRecord]) -> list[tuple[str, str, str | None, list[str]]]:
    return [(r.name, r.action, r.how, r.into) for r in records]


def _both(model: nn.Module, inputs: tuple[torch.Tensor, ...], form: str = "batchnorm") -> list[BnRecord]:
    """Fold from FX and from ONNX, check both against the fp64 reference; the FX records (both agree)."""
    expected = reference(model, inputs)
    fx_result = fold(model, inputs, affine_form=form)
    onnx_model = _onnx(model, inputs)
    onnx_result = fold_onnx(onnx_model, affine_form=form)
    assert _summary(fx_result.records) == _summary(onnx_result.records)
    with torch.no_grad():
        assert_matches(fx_result.module(*inputs), expected)
    feeds = {onnx_model.graph.input[0].name: inputs[0].numpy()}
    assert_numerically_equal(onnx_result.model, feeds, [expected.numpy()])  # type: ignore[union-attr]
    return fx_result.records


def test_a_chain_of_bns_folds_backward_completely() -> None:
    model = randomise(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3), nn.BatchNorm2d(3), nn.Conv2d(3, 2, 3)), seed=11)
    records = _both(model, (image(2, 3, size=5),))
    assert _summary(records) == [("1", "folded", "backward", ["3"]), ("2", "folded", "backward", ["3"])]
    assert aten_batchnorms(fold(model, (image(2, 3, size=5),)).module) == 0


def test_a_bn_nothing_reads_is_removed() -> None:
    model, inputs = randomise(DeadBranch(), seed=12), (image(2, 3, size=5),)
    records = fold(model, inputs).records
    assert _summary(records) == [("unused", "folded", "removed", []), ("bn", "folded", "forward", ["conv"])]
    assert records[0].reason == "its output is unused"
    gen = np.random.default_rng(12)
    nodes = [bn_node("dead", "x", "d"), oh.make_node("Relu", ["x"], ["y"])]
    graph = make_model(nodes, {"x": [1, 3, 4, 4]}, ["y"], bn_params("dead", 3, gen))
    result = fold_onnx(graph)
    assert _summary(result.records) == [("dead", "folded", "removed", [])]
    assert result.records[0].reason == "its output is unused"
    assert [node.op_type for node in result.model.graph.node] == ["Relu"]
    x = gen.standard_normal((1, 3, 4, 4)).astype(np.float32)
    assert_numerically_equal(result.model, {"x": x}, [np.maximum(x, 0)])


@pytest.mark.parametrize("form", ["batchnorm", "muladd"])
def test_an_unfoldable_bn_is_frozen_in_either_form(form: str) -> None:
    model = randomise(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3), nn.ReLU()), seed=13)
    records = _both(model, (image(2, 3, size=5),), form)
    assert _summary(records) == [("1", "affine", None, [])]
