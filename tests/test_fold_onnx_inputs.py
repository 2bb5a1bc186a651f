"""ONNX files as other tools write them, and never silently wrong on them: parameters computed by nodes
(torch's dynamo exporter with ``optimize=False``), initializers a caller can feed, initializers read only
inside control flow, and models that are themselves invalid. References are float64 PyTorch runs of the
original modules, or float64 numpy for hand-built graphs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fold_models import image, randomise, reference
from onnx import TensorProto, numpy_helper
from onnx import helper as oh
from torch import nn

from bnfold.convert import ConvertConfig, convert
from bnfold.errors import BnfoldError
from bnfold.export import quiet
from bnfold.fold.onnx import fold_onnx
from bnfold.fold.onnx.testing import assert_numerically_equal, bn_node, bn_params, bn_ref

F32 = np.float32


class Block(nn.Module):
    """A ResNet basic block with a projection shortcut: bias-free convs, each followed by a BatchNorm."""

    def __init__(self, c_in: int = 3, c_out: int = 8) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, 2, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.down(x))


def test_dynamo_export_without_optimizer_folds_every_batchnorm() -> None:
    """The exporter computes a bias-free conv's zero bias with Shape/Expand nodes: evaluated, it is a constant."""
    module, x = randomise(Block(), seed=61), image(2, 3, size=8)
    with quiet():
        model = torch.onnx.export(module, (x,), dynamo=True, optimize=False).model_proto
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 3
    result = fold_onnx(model)
    assert [(r.name, r.action, r.how) for r in result.records] == [
        ("bn1", "folded", "forward"),
        ("bn2", "folded", "forward"),
        ("down.1", "folded", "forward"),
    ]
    assert not any(n.op_type == "BatchNormalization" for n in result.model.graph.node)
    onnx.checker.check_model(result.model, full_check=True)
    assert_numerically_equal(result.model, {"x": x.numpy()}, [reference(module, [x]).numpy()])


def _conv_bn_inits(seed: int) -> dict[str, np.ndarray]:
    gen = np.random.default_rng(seed)
    return {
        "W": gen.standard_normal((4, 3, 3, 3)).astype(F32),
        "B": gen.standard_normal(4).astype(F32),
        "K": gen.standard_normal((1, 4, 1, 1)).astype(F32),
        **bn_params("bn", 4, gen),
    }


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = torch.nn.functional.conv2d(*(torch.from_numpy(a.astype(np.float64)) for a in (x, w, b)))
    return out.numpy()


def control_flow_model(inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    """conv → BN → If(c): the then-branch multiplies by K, an initializer only the subgraph reads."""
    out = [1, 4, 4, 4]
    then = oh.make_graph(
        [oh.make_node("Mul", ["y", "K"], ["t"])], "then", [], [oh.make_tensor_value_info("t", TensorProto.FLOAT, out)]
    )
    other = oh.make_graph(
        [oh.make_node("Identity", ["y"], ["e"])], "else", [], [oh.make_tensor_value_info("e", TensorProto.FLOAT, out)]
    )
    nodes = [
        oh.make_node("Conv", ["x", "W", "B"], ["h"], name="conv"),
        bn_node("bn", "h", "y"),
        oh.make_node("If", ["c"], ["z"], then_branch=then, else_branch=other, name="if"),
    ]
    graph = oh.make_graph(
        nodes,
        "g",
        [
            oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6]),
            oh.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [oh.make_tensor_value_info("z", TensorProto.FLOAT, out)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_initializer_read_only_inside_a_subgraph_is_kept(tmp_path: Path) -> None:
    inits = _conv_bn_inits(62)
    source = tmp_path / "control_flow.onnx"
    onnx.save(control_flow_model(inits), source)
    result = convert(source, config=ConvertConfig(output=tmp_path / "out.onnx", bench=False, write_reports=False))
    assert result.report["fold"]["batchnorm_folded"] == 1 and result.report["parity"]["passed"]
    folded = onnx.load(tmp_path / "out.onnx")
    assert "K" in {t.name for t in folded.graph.initializer}
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(F32)
    y = bn_ref(_conv(x, inits["W"], inits["B"]), inits, "bn")
    for c in (True, False):
        expected = y * inits["K"].astype(np.float64) if c else y
        assert_numerically_equal(folded, {"x": x, "c": np.array(c)}, [expected])


def test_grouped_conv_transpose_whose_channels_do_not_divide_is_refused() -> None:
    gen = np.random.default_rng(63)
    inits = {"W": gen.standard_normal((6, 2, 3, 3)).astype(F32), **bn_params("bn", 8, gen)}
    nodes = [oh.make_node("ConvTranspose", ["x", "W"], ["h"], name="up", group=4), bn_node("bn", "h", "y")]
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 4, 4])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    with pytest.raises(BnfoldError, match=r"invalid: ConvTranspose 'up' has group=4 .* does not divide") as caught:
        fold_onnx(model)
    assert "\n" not in str(caught.value)
