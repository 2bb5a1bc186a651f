"""fold_onnx on the edges: shared parameters and outputs, BNs that must stay, subgraphs, float16, old IR.

Each case checks the records, the nodes left, the ONNX checker, and onnxruntime against float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto
from onnx import helper as oh

from bnfold.fold.onnx import OnnxFoldResult, fold_onnx
from bnfold.fold.onnx.testing import assert_numerically_equal, bn_node, bn_params, bn_ref, make_model
from bnfold.verify import Tolerance

F32 = np.float32


EXACT = Tolerance(atol=1e-5, rtol=1e-4)  # a fold computed in float64 and cast back


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, **kw: Any) -> np.ndarray:
    """Reference convolution in float64."""
    bias = None if b is None else torch.from_numpy(b.astype(np.float64))
    wide = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w.astype(np.float64))
    return F.conv2d(*wide, bias, **kw).numpy()


def fold_and_check(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    expected: list[np.ndarray],
    actions: list[str],
    expect_ops: list[str],
    tolerance: Tolerance = EXACT,
) -> OnnxFoldResult:
    result = fold_onnx(model, "muladd")
    assert [r.action for r in result.records] == actions, [r.describe() for r in result.records]
    assert ops(result.model) == expect_ops
    onnx.checker.check_model(result.model, full_check=True)
    assert_numerically_equal(result.model, feeds, expected, tolerance.rtol, tolerance.atol)
    return result


def setup(seed: int, channels: int = 4) -> tuple[dict[str, np.ndarray], np.ndarray]:
    gen = np.random.default_rng(seed)
    inits = {
        "W": gen.standard_normal((channels, 3, 3, 3)).astype(F32),
        "B": gen.standard_normal(channels).astype(F32),
    }
    return inits | bn_params("bn", channels, gen), gen.standard_normal((1, 3, 6, 6)).astype(F32)


def conv_node(x: str, y: str, name: str = "conv", weight: str = "W", bias: str = "B", **attrs: Any) -> onnx.NodeProto:
    return oh.make_node("Conv", [x, weight, bias], [y], name=name, **attrs)


# ---- sharing -------------------------------------------------------------------------------------
def test_shared_weight_gets_its_own_copy() -> None:
    inits, x = setup(1)
    nodes = [conv_node("x", "h", "a"), bn_node("bn", "h", "y1"), conv_node("x", "y2", "b")]
    model = make_model(nodes, {"x": [1, 3, 6, 6]}, ["y1", "y2"], inits)
    plain = conv(x, inits["W"], inits["B"])
    result = fold_and_check(model, {"x": x}, [bn_ref(plain, inits, "bn"), plain], ["folded"], ["Conv", "Conv"])
    a, b = result.model.graph.node
    assert a.input[1] != b.input[1] and b.input[1:] == ["W", "B"]


def test_conv_output_that_is_a_graph_output_is_not_folded_into() -> None:
    inits, x = setup(2)
    model = make_model([conv_node("x", "h"), bn_node("bn", "h", "y")], {"x": [1, 3, 6, 6]}, ["h", "y"], inits)
    plain = conv(x, inits["W"], inits["B"])
    result = fold_and_check(model, {"x": x}, [plain, bn_ref(plain, inits, "bn")], ["affine"], ["Conv", "Mul", "Add"])
    assert "the output of Conv 'conv' also feeds the model output" in str(result.records[0].reason)
    assert "cannot fold backward: its output is a model output" in str(result.records[0].reason)


def test_identity_branch_of_an_add_is_not_folded() -> None:
    gen = np.random.default_rng(3)
    inits = {"W": gen.standard_normal((3, 3, 1, 1)).astype(F32), "B": np.zeros(3, F32)} | bn_params("bn", 3, gen)
    nodes = [conv_node("x", "h"), oh.make_node("Add", ["h", "x"], ["s"], name="add"), bn_node("bn", "s", "y")]
    model = make_model(nodes, {"x": [1, 3, 4, 4]}, ["y"], inits)
    x = gen.standard_normal((1, 3, 4, 4)).astype(F32)
    expected = bn_ref(conv(x, inits["W"], inits["B"]) + x, inits, "bn")
    result = fold_and_check(model, {"x": x}, [expected], ["affine"], ["Conv", "Add", "Mul", "Add"])
    assert "a summand of Add 'add' comes from the model input 'x', which has no weights to fold into" in str(
        result.records[0].reason
    )


@pytest.mark.parametrize(
    ("attrs", "problem"),
    [
        ({"pads": [2, 2, 0, 0]}, "is not a centred odd kernel with 'same' padding"),
        ({"pads": [1, 1, 1, 1], "group": 2}, None),
    ],
)
def test_identity_branch_needs_a_centred_kernel(attrs: dict[str, Any], problem: str | None) -> None:
    gen = np.random.default_rng(5)
    groups = attrs.get("group", 1)
    inits = {
        "W": gen.standard_normal((4, 4 // groups, 3, 3)).astype(F32),
        "B": gen.standard_normal(4).astype(F32),
    } | bn_params("bn", 4, gen)
    nodes = [
        oh.make_node("Relu", ["x"], ["r"], name="relu"),
        conv_node("r", "h", **attrs),
        bn_node("bn", "r", "i"),
        oh.make_node("Add", ["h", "i"], ["y"], name="add"),
    ]
    model = make_model(nodes, {"x": [1, 4, 6, 6]}, ["y"], inits)
    x = gen.standard_normal((1, 4, 6, 6)).astype(F32)
    r = np.maximum(x, 0)
    padded = np.pad(r, [(0, 0), (0, 0), (attrs["pads"][0], attrs["pads"][2]), (attrs["pads"][1], attrs["pads"][3])])
    expected = conv(padded, inits["W"], inits["B"], groups=groups) + bn_ref(r, inits, "bn")
    folded = problem is None
    result = fold_and_check(
        model,
        {"x": x},
        [expected],
        ["folded" if folded else "affine"],
        ["Relu", "Conv"] if folded else ["Relu", "Conv", "Mul", "Add", "Add"],
    )
    if folded:
        assert (result.records[0].how, result.records[0].into) == ("identity", ["conv"])
    else:
        assert f"as an identity branch: conv {problem}" in str(result.records[0].reason)


def test_concat_along_another_axis_gives_each_input_the_whole_affine() -> None:
    inits, x = setup(4)
    nodes = [
        conv_node("x", "a", "a"),
        conv_node("x", "b", "b"),
        oh.make_node("Concat", ["a", "b"], ["c"], axis=-2),
        bn_node("bn", "c", "y"),
    ]
    model = make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], inits)
    plain = conv(x, inits["W"], inits["B"])
    expected = bn_ref(np.concatenate([plain, plain], 2), inits, "bn")
    result = fold_and_check(model, {"x": x}, [expected], ["folded"], ["Conv", "Conv", "Concat"])
    assert (result.records[0].how, result.records[0].into) == ("concat", ["a", "b"])


def test_backward_into_several_consumers() -> None:
    inits, _ = setup(5, channels=3)
    gen = np.random.default_rng(5)
    inits["V"] = gen.standard_normal((2, 3, 1, 1)).astype(F32)
    nodes = [
        oh.make_node("Relu", ["x"], ["r"]),
        bn_node("bn", "r", "h"),
        conv_node("h", "y1", "c3", weight="W", bias="B"),
        oh.make_node("Conv", ["h", "V"], ["y2"], name="c1", auto_pad="SAME_UPPER"),
    ]
    model = make_model(nodes, {"x": [1, 3, 5, 5]}, ["y1", "y2"], inits)
    x = gen.standard_normal((1, 3, 5, 5)).astype(F32)
    h = bn_ref(np.maximum(x, 0).astype(np.float64), inits, "bn")
    expected = [conv(h, inits["W"], inits["B"]), conv(h, inits["V"])]
    result = fold_and_check(model, {"x": x}, expected, ["folded"], ["Relu", "Conv", "Conv"])
    assert (result.records[0].how, result.records[0].into) == ("backward", ["c3", "c1"])


def test_same_padding_blocks_a_backward_fold() -> None:
    inits, _ = setup(6, channels=3)
    nodes = [oh.make_node("Relu", ["x"], ["r"]), bn_node("bn", "r", "h")]
    nodes.append(oh.make_node("Conv", ["h", "W", "B"], ["y"], name="c3", auto_pad="SAME_LOWER"))
    model = make_model(nodes, {"x": [1, 3, 5, 5]}, ["y"], inits)
    x = np.random.default_rng(6).standard_normal((1, 3, 5, 5)).astype(F32)
    expected = conv(bn_ref(np.maximum(x, 0).astype(np.float64), inits, "bn"), inits["W"], inits["B"], padding=1)
    result = fold_and_check(model, {"x": x}, [expected], ["affine"], ["Relu", "Mul", "Add", "Conv"])
    assert "c3 pads its input with zeros (auto_pad=SAME_LOWER)" in str(result.records[0].reason)


# ---- BNs that stay -------------------------------------------------------------------------------
def test_training_mode_batchnorm_is_kept() -> None:
    inits, x = setup(7)
    bn = bn_node("bn", "h", "y", training_mode=1)
    bn.output.extend(["running_mean", "running_var"])
    model = make_model([conv_node("x", "h"), bn], {"x": [1, 3, 6, 6]}, ["y"], inits)
    h = conv(x, inits["W"], inits["B"])
    batch = {"bn.mean": h.mean((0, 2, 3)), "bn.var": h.var((0, 2, 3))} | {k: inits[k] for k in ("bn.scale", "bn.bias")}
    result = fold_and_check(model, {"x": x}, [bn_ref(h, batch, "bn")], ["kept"], ["Conv", "BatchNormalization"])
    assert result.records[0].reason == "normalises each batch with that batch's own statistics"


def test_batchnorm_with_a_computed_scale_is_kept() -> None:
    inits, x = setup(8)
    scale = inits.pop("bn.scale")
    model = make_model(
        [conv_node("x", "h"), bn_node("bn", "h", "y")], {"x": [1, 3, 6, 6], "bn.scale": [4]}, ["y"], inits
    )
    expected = bn_ref(conv(x, inits["W"], inits["B"]), inits | {"bn.scale": scale}, "bn")
    result = fold_and_check(model, {"x": x, "bn.scale": scale}, [expected], ["kept"], ["Conv", "BatchNormalization"])
    assert result.records[0].reason == "its scale, bias, mean or variance is not a constant"


def test_unknown_rank_keeps_the_batchnorm() -> None:
    """A Reshape to a shape given at run time has an unknown rank, so a frozen affine cannot be shaped."""
    inits, _ = setup(9)
    inits["flat"] = np.array([2, 12])
    nodes = [oh.make_node("Reshape", ["x", "shape"], ["r"]), bn_node("bn", "r", "z")]
    nodes.append(oh.make_node("Reshape", ["z", "flat"], ["y"]))
    model = make_model(nodes, {"x": [2, 12], "shape": ["n"]}, ["y"], inits)
    model.graph.input[1].type.tensor_type.elem_type = TensorProto.INT64
    x = np.random.default_rng(9).standard_normal((2, 12)).astype(F32)
    expected = bn_ref(x.reshape(2, 4, 3).astype(np.float64), inits, "bn").reshape(2, 12)
    feeds = {"x": x, "shape": np.array([2, 4, 3])}
    result = fold_and_check(model, feeds, [expected], ["kept"], ["Reshape", "BatchNormalization", "Reshape"])
    assert "rank of its input 'r' is unknown" in str(result.records[0].reason)


def test_unused_batchnorm_is_removed_and_recorded() -> None:
    inits, x = setup(10)
    nodes = [conv_node("x", "h"), oh.make_node("Relu", ["h"], ["y"]), bn_node("bn", "h", "unused")]
    model = make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], inits)
    expected = np.maximum(conv(x, inits["W"], inits["B"]), 0)
    result = fold_and_check(model, {"x": x}, [expected], ["folded"], ["Conv", "Relu"])
    assert (result.records[0].how, result.records[0].reason) == ("removed", "its output is unused")
    assert {t.name for t in result.model.graph.initializer} == {"W", "B"}


def test_batchnorm_inside_a_subgraph_is_recorded_as_kept() -> None:
    inits, x = setup(11)
    branch = oh.make_graph(
        [bn_node("inner_bn", "h", "z")], "then", [], [oh.make_tensor_value_info("z", TensorProto.FLOAT, None)]
    )
    other = oh.make_graph(
        [oh.make_node("Identity", ["h"], ["w"])],
        "else",
        [],
        [oh.make_tensor_value_info("w", TensorProto.FLOAT, None)],
    )
    params = bn_params("inner_bn", 4, np.random.default_rng(11))
    nodes = [
        conv_node("x", "h"),
        oh.make_node("If", ["c"], ["y"], name="if", then_branch=branch, else_branch=other),
    ]
    model = make_model(nodes, {"x": [1, 3, 6, 6], "c": []}, ["y"], inits | params)
    model.graph.input[1].type.tensor_type.elem_type = TensorProto.BOOL
    expected = bn_ref(conv(x, inits["W"], inits["B"]), params, "inner_bn")
    result = fold_and_check(model, {"x": x, "c": np.array(True)}, [expected], ["kept"], ["Conv", "If"])
    assert result.records[0].name == "inner_bn"
    assert "inside a subgraph of If 'if'" in str(result.records[0].reason)


# ---- names, types, IR -----------------------------------------------------------------------------
def test_unnamed_batchnorm_is_named_by_its_output() -> None:
    inits, x = setup(12)
    bn = bn_node("bn", "h", "y")
    bn.name = ""
    model = make_model([conv_node("x", "h"), bn], {"x": [1, 3, 6, 6]}, ["y"], inits)
    result = fold_and_check(
        model, {"x": x}, [bn_ref(conv(x, inits["W"], inits["B"]), inits, "bn")], ["folded"], ["Conv"]
    )
    assert result.records[0].name == "y"


def test_float16_parameters_stay_float16() -> None:
    gen = np.random.default_rng(13)
    inits = {
        "W": gen.standard_normal((4, 3, 3, 3)).astype(np.float16),
        "B": gen.standard_normal(4).astype(np.float16),
    }
    inits |= bn_params("bn", 4, gen, np.float16)
    nodes = [conv_node("x", "h"), bn_node("bn", "h", "y")]
    model = make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], inits, elem_type=TensorProto.FLOAT16)
    x = gen.standard_normal((1, 3, 6, 6)).astype(np.float16)
    expected = bn_ref(conv(x, inits["W"], inits["B"]), inits, "bn")
    result = fold_and_check(
        model, {"x": x}, [expected], ["folded"], ["Conv"], tolerance=Tolerance(atol=2e-2, rtol=2e-2)
    )
    assert {t.data_type for t in result.model.graph.initializer} == {TensorProto.FLOAT16}


@pytest.mark.parametrize("opset", [9, 13])
def test_old_ir_with_initializers_listed_as_inputs_is_kept(opset: int) -> None:
    """IR 3 lists every initializer as a graph input: each is a default the caller may feed, so nothing folds."""
    inits, x = setup(14)
    model = make_model([conv_node("x", "h"), bn_node("bn", "h", "y")], {"x": [1, 3, 6, 6]}, ["y"], inits, opset=opset)
    model.ir_version = 3
    for tensor in model.graph.initializer:
        model.graph.input.append(oh.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    expected = [bn_ref(conv(x, inits["W"], inits["B"]), inits, "bn")]
    result = fold_and_check(model, {"x": x}, expected, ["kept"], ["Conv", "BatchNormalization"])
    assert "can be overridden by the graph input 'bn.scale'" in result.records[0].reason
    assert [v.name for v in result.model.graph.input] == [v.name for v in model.graph.input]


def test_weight_that_is_also_a_graph_input_is_not_folded_into() -> None:
    """A caller may feed W: folding the BN into it would be lost the moment they do."""
    inits, x = setup(15)
    model = make_model([conv_node("x", "h"), bn_node("bn", "h", "y")], {"x": [1, 3, 6, 6]}, ["y"], inits)
    model.graph.input.append(oh.make_tensor_value_info("W", TensorProto.FLOAT, list(inits["W"].shape)))
    result = fold_and_check(
        model, {"x": x}, [bn_ref(conv(x, inits["W"], inits["B"]), inits, "bn")], ["affine"], ["Conv", "Mul", "Add"]
    )
    assert "the weight of Conv 'conv' can be overridden by the graph input 'W'" in result.records[0].reason
    other = np.random.default_rng(1).standard_normal(inits["W"].shape).astype(F32)
    assert_numerically_equal(result.model, {"x": x, "W": other}, [bn_ref(conv(x, other, inits["B"]), inits, "bn")])
