"""Shape arithmetic in the written graph: folded where shape inference knows the numbers, kept where a
dimension is symbolic, from every input format, with the batch still dynamic."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from fold_models import randomise
from onnx import TensorProto, helper
from torch import nn
from written_graphs import FORMATS, assert_equals_reference, ops, run, written

from bnfold.export import tidy

SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Div", "Slice", "Constant")


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit: chunk, conv-BN on one half, concatenate, channel shuffle, then flatten."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(nn.Conv2d(half, half, 3, padding=1), nn.BatchNorm2d(half), nn.ReLU())
        self.head = nn.Linear(channels * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        y = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(torch.flatten(y, 1))


def _shuffle_graph(fmt: str) -> tuple[nn.Module, onnx.ModelProto]:
    model = randomise(ShuffleUnit(), seed=81)
    return model, written(model, (torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(1)),), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_channel_shuffle_leaves_no_shape_arithmetic(fmt: str) -> None:
    model, graph = _shuffle_graph(fmt)
    assert not {op: n for op, n in ops(graph).items() if op in SHAPE_OPS}, ops(graph)
    assert ops(graph)["Split"] == 1 and ops(graph)["Reshape"] + ops(graph)["Flatten"] == 3
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "the batch stays symbolic"
    assert_equals_reference(graph, model, [torch.randn(2, 8, 4, 4)])


@pytest.mark.parametrize("fmt", FORMATS)
def test_channel_shuffle_runs_at_another_batch(fmt: str) -> None:
    model, graph = _shuffle_graph(fmt)
    assert_equals_reference(graph, model, [torch.randn(5, 8, 4, 4, generator=torch.Generator().manual_seed(2))])


def _graph(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], out_shape: list[object]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "length", 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _int64(name: str, values: list[int]) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def test_a_reshape_with_two_symbolic_dimensions_keeps_its_shape_computation() -> None:
    """[batch, length, 6] → [batch, length, 2, 3]: the shape is computed at run time, not guessed."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], end=2),
        helper.make_node("Concat", ["s", "tail"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    model = tidy(_graph(nodes, [_int64("tail", [2, 3])], ["batch", "length", 2, 3]))
    assert ops(model)["Shape"] == 1
    x = np.random.default_rng(0).standard_normal((3, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(run(model, [torch.from_numpy(x)])[0], x.reshape(3, 5, 2, 3))


def test_a_declared_example_shape_does_not_become_a_constant() -> None:
    """An exporter's value_info that states a traced batch (2) for a value whose batch is dynamic is not
    trusted: the batch read from that value's shape stays a run-time value, and the graph runs at batch 4."""
    nodes = [
        helper.make_node("Reshape", ["x", "keep_batch"], ["flat"]),
        helper.make_node("Shape", ["flat"], ["s"], end=1),
        helper.make_node("Concat", ["s", "tail"], ["shape"], axis=0),
        helper.make_node("Reshape", ["flat", "shape"], ["y"]),
    ]
    model = _graph(nodes, [_int64("keep_batch", [0, -1]), _int64("tail", [4, 6])], ["batch", 4, 6])
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 4
    model.graph.value_info.append(helper.make_tensor_value_info("flat", TensorProto.FLOAT, [2, 24]))
    tidied = tidy(model)
    x = np.random.default_rng(1).standard_normal((4, 4, 6)).astype(np.float32)
    np.testing.assert_array_equal(run(tidied, [torch.from_numpy(x)])[0], x.reshape(4, 4, 6))


def test_slices_that_do_not_tile_the_axis_stay() -> None:
    """[0, 2) and [3, 6) of the last axis leave a gap: no Split."""
    nodes = [
        helper.make_node("Slice", ["x", "s0", "e0", "axis"], ["a"]),
        helper.make_node("Slice", ["x", "s1", "e1", "axis"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["y"], axis=2),
    ]
    inits = [_int64(n, [v]) for n, v in (("s0", 0), ("e0", 2), ("s1", 3), ("e1", 6), ("axis", -1))]
    model = tidy(_graph(nodes, inits, ["batch", "length", 5]))
    assert ops(model)["Slice"] == 2 and ops(model)["Split"] == 0
    x = np.random.default_rng(2).standard_normal((2, 3, 6)).astype(np.float32)
    np.testing.assert_array_equal(run(model, [torch.from_numpy(x)])[0], np.delete(x, 2, axis=2))


def test_opset_before_13_keeps_its_slices_and_reshapes() -> None:
    """Split takes its sizes as an input from opset 13 on, Reshape's allowzero from 14: older graphs keep
    what they have."""
    nodes = [
        helper.make_node("Slice", ["x", "s0", "e0", "axis"], ["a"]),
        helper.make_node("Slice", ["x", "e0", "e1", "axis"], ["b"]),
        helper.make_node("Concat", ["b", "a"], ["y"], axis=2),
    ]
    inits = [_int64(n, [v]) for n, v in (("s0", 0), ("e0", 2), ("e1", 6), ("axis", 2))]
    model = _graph(nodes, inits, ["batch", "length", 6])
    model.opset_import[0].version = 12
    assert ops(tidy(model))["Slice"] == 2
    model.opset_import[0].version = 13
    assert ops(tidy(model))["Split"] == 1
