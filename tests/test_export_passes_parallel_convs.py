"""One Conv per reparameterisable block: parallel Conv branches summed by Adds merge into one Conv, from every
input format, equal to a float64 run of the original; and every case where the merge would not be exact
keeps its Convs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from fold_models import ACBlock, RepVGGBlock, image, randomise
from onnx import TensorProto, helper, numpy_helper
from test_fold_inplace import InPlaceMobileOne, InPlaceRepVGG
from torch import nn
from written_graphs import FORMATS, assert_equals_reference, ops, run, written

import bnfold
from bnfold.export import tidy
from bnfold.export.passes import merged_convs

BLOCKS = {
    "repvgg": (lambda: randomise(RepVGGBlock(), seed=91), ["conv1", "conv3"]),
    "repvgg_in_place": (lambda: randomise(InPlaceRepVGG(), seed=92), ["dense.0", "one.0"]),
    "mobileone_in_place": (
        lambda: randomise(InPlaceMobileOne(), seed=93),
        ["rbr_conv.0.0", "rbr_conv.1.0", "rbr_conv.2.0", "rbr_scale.0"],
    ),
    "mobileone_depthwise": (
        lambda: randomise(InPlaceMobileOne(groups=4), seed=94),
        ["rbr_conv.0.0", "rbr_conv.1.0", "rbr_conv.2.0", "rbr_scale.0"],
    ),
    "acnet": (lambda: randomise(ACBlock(4, 4), seed=95), ["hor", "square", "ver"]),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_a_reparameterisable_block_ends_as_one_conv(block: str, fmt: str) -> None:
    build, convs = BLOCKS[block]
    model = build()
    graph = written(model, (image(2, 4),), fmt)
    assert ops(graph)["Conv"] == 1 and ops(graph)["Add"] == 0, ops(graph)
    assert [(m["convs"], m["kernel_shape"]) for m in merged_convs(graph)] == [(convs, [3, 3])]
    assert_equals_reference(graph, model, [image(2, 4)])
    assert_equals_reference(graph, model, [image(2, 4, seed=5, batch=3)])


class TwoBlocks(nn.Module):
    """Two RepVGG blocks in a row, then a residual sum with the input that is not a conv branch."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = InPlaceRepVGG(), InPlaceRepVGG()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)) + x


def test_each_block_merges_and_other_summands_stay() -> None:
    model = randomise(TwoBlocks(), seed=96)
    graph = written(model, (image(2, 4),), "TorchScript")
    assert ops(graph)["Conv"] == 2 and ops(graph)["Add"] == 1
    assert len(merged_convs(graph)) == 2
    assert_equals_reference(graph, model, [image(2, 4)])


# --- hand-written graphs: what merges, what must not ------------------------------------------------------


@dataclass
class Branch:
    """One Conv of ``x`` (or of ``reads``) in a hand-written sum."""

    kernel: tuple[int, int] = (3, 3)
    pads: tuple[int, int, int, int] | None = (1, 1, 1, 1)  # ONNX order: begins, then ends
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    group: int = 1
    auto_pad: str = "NOTSET"
    bias: bool = True
    reads: str = "x"
    extra: dict[str, object] = field(default_factory=dict)


CHANNELS, SIZE = 4, 6


def _weights(branch: Branch, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(n)
    w = rng.standard_normal((CHANNELS, CHANNELS // branch.group, *branch.kernel)).astype(np.float32)
    return w, rng.standard_normal(CHANNELS).astype(np.float32) if branch.bias else None


def _sum_graph(branches: Sequence[Branch], spatial: object = SIZE) -> tuple[onnx.ModelProto, list[Sequence[object]]]:
    """x (and y) → one Conv per branch → a chain of Adds → out."""
    nodes, inits, params = [], [], []
    for n, branch in enumerate(branches):
        w, b = _weights(branch, n)
        inits.append(numpy_helper.from_array(w, f"w{n}"))
        inputs = [branch.reads, f"w{n}"]
        if b is not None:
            inits.append(numpy_helper.from_array(b, f"b{n}"))
            inputs.append(f"b{n}")
        attrs: dict[str, object] = {"strides": list(branch.strides), "dilations": list(branch.dilations)}
        attrs.update(group=branch.group, auto_pad=branch.auto_pad, kernel_shape=list(branch.kernel))
        if branch.pads is not None:
            attrs["pads"] = list(branch.pads)
        nodes.append(helper.make_node("Conv", inputs, [f"c{n}"], name=f"conv{n}", **attrs))
        params.append((w, b))
    total = "c0"
    for n in range(1, len(branches)):
        nodes.append(helper.make_node("Add", [total, f"c{n}"], [f"s{n}"], name=f"add{n}"))
        total = f"s{n}"
    nodes[-1].output[0] = "out"
    image_type = ["batch", CHANNELS, spatial, spatial]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, image_type) for name in ("x", "y")]
    graph = helper.make_graph(nodes, "sum", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    graph.initializer.extend(inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), params


def _reference(branches: Sequence[Branch], params: list[Sequence[object]], feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The sum of the convolutions in float64 with torch."""
    total = None
    for branch, (w, b) in zip(branches, params, strict=True):
        x = torch.from_numpy(feeds[branch.reads]).double()
        pads = branch.pads or (0, 0, 0, 0)
        if branch.auto_pad == "SAME_UPPER":  # as the ONNX operator defines it
            totals = [
                max((-(-SIZE // s) - 1) * s + (k - 1) * d + 1 - SIZE, 0)
                for k, s, d in zip(branch.kernel, branch.strides, branch.dilations, strict=True)
            ]
            pads = (*(t // 2 for t in totals), *(t - t // 2 for t in totals))
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        bias = torch.from_numpy(b).double() if b is not None else None  # type: ignore[arg-type]
        y = F.conv2d(x, torch.from_numpy(w).double(), bias, branch.strides, 0, branch.dilations, branch.group)  # type: ignore[arg-type]
        total = y if total is None else total + y
    assert total is not None
    return total.numpy()


def _merge(branches: Sequence[Branch], **graph_options: object) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    model, params = _sum_graph(branches, **graph_options)  # type: ignore[arg-type]
    tidied = tidy(model)
    rng = np.random.default_rng(7)
    feeds = {name: rng.standard_normal((2, CHANNELS, SIZE, SIZE)).astype(np.float32) for name in ("x", "y")}
    expected = _reference(branches, params, feeds)
    actual = run(tidied, [torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["y"])])[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    return model, tidied


MERGE = {
    "centred 3x3 and 1x1": [Branch(), Branch((1, 1), (0, 0, 0, 0))],
    "1x1 without bias": [Branch(), Branch((1, 1), (0, 0, 0, 0), bias=False)],
    "asymmetric pads, 1x1 at the corner": [Branch(pads=(2, 2, 0, 0)), Branch((1, 1), (0, 0, 0, 0))],
    "even kernel, off-centre": [Branch((4, 4), (2, 2, 1, 1)), Branch((1, 1), (0, 0, 0, 0))],
    "ACNet's 3x3, 1x3, 3x1": [Branch(), Branch((1, 3), (0, 1, 0, 1)), Branch((3, 1), (1, 0, 1, 0))],
    "dilated, stride 2": [
        Branch(pads=(2, 2, 2, 2), dilations=(2, 2), strides=(2, 2)),
        Branch((1, 1), (0, 0, 0, 0), strides=(2, 2), dilations=(2, 2)),
    ],
    "depthwise": [Branch(group=CHANNELS), Branch((1, 1), (0, 0, 0, 0), group=CHANNELS)],
    "auto_pad SAME_UPPER at stride 1": [Branch(auto_pad="SAME_UPPER", pads=None), Branch((1, 1), (0, 0, 0, 0))],
    "auto_pad VALID beside pads 0": [Branch((1, 1), None, auto_pad="VALID"), Branch((1, 1), (0, 0, 0, 0))],
}


@pytest.mark.parametrize("case", sorted(MERGE))
def test_parallel_convs_merge(case: str) -> None:
    _, tidied = _merge(MERGE[case])
    assert ops(tidied)["Conv"] == 1 and ops(tidied)["Add"] == 0, ops(tidied)
    assert merged_convs(tidied)[0]["convs"] == [f"conv{n}" for n in range(len(MERGE[case]))]


KEEP = {
    "different strides": [Branch(pads=(0, 0, 0, 0), strides=(2, 2)), Branch((1, 1), (0, 0, 0, 0), strides=(3, 3))],
    "different dilations": [Branch(pads=(2, 2, 2, 2), dilations=(2, 2)), Branch(pads=(1, 1, 1, 1))],
    "different groups": [Branch(group=2), Branch((1, 1), (0, 0, 0, 0))],
    "different inputs": [Branch(), Branch((1, 1), (0, 0, 0, 0), reads="y")],
    "kernels that cannot line up": [Branch(pads=(1, 1, 1, 1)), Branch(pads=(2, 2, 0, 0))],
    "auto_pad SAME_UPPER at stride 2, size unknown": [
        Branch(auto_pad="SAME_UPPER", pads=None, strides=(2, 2)),
        Branch((1, 1), (0, 0, 0, 0), strides=(2, 2)),
    ],
}


@pytest.mark.parametrize("case", sorted(KEEP))
def test_convs_that_would_not_merge_exactly_stay(case: str) -> None:
    options = {"spatial": "size"} if "unknown" in case else {}
    _, tidied = _merge(KEEP[case], **options)
    assert ops(tidied)["Conv"] == 2 and ops(tidied)["Add"] == 1
    assert merged_convs(tidied) == []


def _graph_with(change: str) -> onnx.ModelProto:
    model, _ = _sum_graph([Branch(), Branch((1, 1), (0, 0, 0, 0))])
    graph = model.graph
    if change == "branch output read elsewhere":
        graph.output.append(helper.make_tensor_value_info("c1", TensorProto.FLOAT, None))
    elif change == "branch output read by another node":
        graph.node.append(helper.make_node("Relu", ["c0"], ["r"]))
        graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    elif change == "weight is a graph input":
        weight = next(i for i in graph.initializer if i.name == "w1")
        graph.input.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT, list(weight.dims)))
        graph.initializer.remove(weight)
    elif change == "initializer that is also a graph input":
        graph.input.append(helper.make_tensor_value_info("b0", TensorProto.FLOAT, [CHANNELS]))
    elif change == "weight computed by a node":
        graph.input.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1]))
        graph.node.insert(0, helper.make_node("Mul", ["w1", "scale"], ["w1_scaled"]))
        graph.node[2].input[1] = "w1_scaled"
    return model


@pytest.mark.parametrize(
    "change",
    [
        "branch output read elsewhere",
        "branch output read by another node",
        "weight is a graph input",
        "initializer that is also a graph input",
        "weight computed by a node",
    ],
)
def test_branches_a_caller_or_another_node_can_see_stay(change: str) -> None:
    model = _graph_with(change)
    tidied = tidy(model)
    assert ops(tidied)["Conv"] == 2 and ops(tidied)["Add"] == 1, ops(tidied)
    assert merged_convs(tidied) == []


def test_the_report_lists_the_merged_convs(tmp_path: Path) -> None:
    """``onnx.merged_convs`` in the JSON report, as the written file's metadata says."""
    model = randomise(InPlaceMobileOne(), seed=97)
    path = tmp_path / "block.pt2"
    torch.export.save(torch.export.export(model, (image(2, 4),)), path)
    result = bnfold.convert(path, bnfold.ConvertConfig(output=tmp_path / "block.onnx", bench=False))
    assert result.passed
    written_report = json.loads((tmp_path / "block.report.json").read_text())
    expected = [{"node": "/Conv", "convs": BLOCKS["mobileone_in_place"][1], "kernel_shape": [3, 3]}]
    assert written_report["onnx"]["merged_convs"] == expected
    assert written_report["onnx"]["nodes"] == 2  # Conv, Relu
