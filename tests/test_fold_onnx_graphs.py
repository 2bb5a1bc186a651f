"""fold_onnx on graphs built by hand with onnx.helper: Gemm and MatMul layouts, channels-last MatMul with
a Transpose, Mul/Add constants, shared parameters. The reference is the original formula in float64
(numpy, or torch.nn.functional for convolutions), computed from the parameters as stored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper as oh

from bnfold.fold.onnx import OnnxFoldResult, fold_onnx
from bnfold.fold.onnx.testing import assert_numerically_equal, bn_node, bn_params, bn_ref, make_model
from bnfold.verify import Tolerance

F32 = np.float32
RNG_SEED = 7


EXACT = Tolerance(atol=1e-5, rtol=1e-4)  # a fold computed in float64 and cast back


def rng(seed: int = RNG_SEED) -> np.random.Generator:
    return np.random.default_rng(seed)


def f64(*arrays: np.ndarray) -> list[np.ndarray]:
    return [a.astype(np.float64) for a in arrays]


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def check(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    expected: list[np.ndarray],
    folded: int,
    expect_ops: list[str],
    tolerance: Tolerance = EXACT,
) -> OnnxFoldResult:
    onnx.checker.check_model(model, full_check=True)
    result = fold_onnx(model, "muladd")
    assert sum(r.action == "folded" for r in result.records) == folded, [r.describe() for r in result.records]
    assert ops(result.model) == expect_ops
    assert [v.name for v in result.model.graph.input] == [v.name for v in model.graph.input]
    assert [v.name for v in result.model.graph.output] == [v.name for v in model.graph.output]
    onnx.checker.check_model(result.model, full_check=True)
    assert_numerically_equal(result.model, feeds, expected, tolerance.rtol, tolerance.atol)
    return result


# ---- Gemm ----------------------------------------------------------------------------------------
GEMM_C = [None, (5,), (1, 5), (4, 5), (4, 1), ()]


def gemm_setup(trans_b: int, c_shape: tuple[int, ...] | None, k: int = 6) -> dict[str, np.ndarray]:
    gen = rng()
    inits = {"B": gen.standard_normal((5, k) if trans_b else (k, 5)).astype(F32)}
    if c_shape is not None:
        inits["C"] = gen.standard_normal(c_shape).astype(F32)
    return inits


def gemm_ref(a: np.ndarray, inits: dict[str, np.ndarray], trans_b: int, alpha: float, beta: float) -> np.ndarray:
    b = inits["B"].astype(np.float64)
    out = alpha * a @ (b.T if trans_b else b)
    return out + beta * inits["C"].astype(np.float64) if "C" in inits else out


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, 2.0)])
@pytest.mark.parametrize("c_shape", GEMM_C)
def test_gemm_then_batchnorm(trans_b: int, alpha: float, beta: float, c_shape: tuple[int, ...] | None) -> None:
    inits = gemm_setup(trans_b, c_shape) | bn_params("bn", 5, rng(1))
    gemm_inputs = ["a", "B"] + (["C"] if c_shape is not None else [])
    gemm = oh.make_node("Gemm", gemm_inputs, ["h"], name="fc", alpha=alpha, beta=beta, transB=trans_b)
    model = make_model([gemm, bn_node("bn", "h", "y")], {"a": [4, 6]}, ["y"], inits)
    a = rng(2).standard_normal((4, 6)).astype(F32)
    expected = bn_ref(gemm_ref(a.astype(np.float64), inits, trans_b, alpha, beta), inits, "bn")
    result = check(model, {"a": a}, [expected], 1, ["Gemm"])
    assert (result.records[0].how, result.records[0].into) == ("forward", ["fc"])


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, 2.0)])
@pytest.mark.parametrize("c_shape", GEMM_C)
def test_batchnorm_then_gemm(trans_b: int, alpha: float, beta: float, c_shape: tuple[int, ...] | None) -> None:
    inits = gemm_setup(trans_b, c_shape) | bn_params("bn", 6, rng(1))
    gemm_inputs = ["h", "B"] + (["C"] if c_shape is not None else [])
    gemm = oh.make_node("Gemm", gemm_inputs, ["y"], name="fc", alpha=alpha, beta=beta, transB=trans_b)
    model = make_model([bn_node("bn", "a", "h"), gemm], {"a": [4, 6]}, ["y"], inits)
    a = rng(2).standard_normal((4, 6)).astype(F32)
    expected = gemm_ref(bn_ref(a.astype(np.float64), inits, "bn"), inits, trans_b, alpha, beta)
    result = check(model, {"a": a}, [expected], 1, ["Gemm"])
    assert (result.records[0].how, result.records[0].into) == ("backward", ["fc"])


@pytest.mark.parametrize("training_mode", [None, False, True])
def test_a_dropout_between_batchnorm_and_gemm_is_looked_through_at_inference(training_mode: bool | None) -> None:
    """BatchNormalization -> Dropout -> Gemm, as other producers write a classifier head: a Dropout that is not
    training is the identity, and the BN folds through it; one in training mode is random, and the BN stays."""
    inits = gemm_setup(1, (5,)) | bn_params("bn", 6, rng(1))
    dropout_inputs = ["h"]
    if training_mode is not None:
        inits |= {"ratio": np.array(0.3, F32), "training": np.array(training_mode)}
        dropout_inputs += ["ratio", "training"]
    nodes = [
        bn_node("bn", "a", "h"),
        oh.make_node("Dropout", dropout_inputs, ["d"], name="drop"),
        oh.make_node("Gemm", ["d", "B", "C"], ["y"], name="fc", transB=1),
    ]
    model = make_model(nodes, {"a": [4, 6]}, ["y"], inits)
    if training_mode:
        result = fold_onnx(model)
        assert [r.action for r in result.records] == ["affine"] and "Dropout" in ops(result.model)
        return
    a = rng(2).standard_normal((4, 6)).astype(F32)
    expected = gemm_ref(bn_ref(a.astype(np.float64), inits, "bn"), inits, 1, 1.0, 1.0)
    result = check(model, {"a": a}, [expected], 1, ["Gemm"])
    assert (result.records[0].how, result.records[0].into) == ("backward", ["fc"])


# ---- MatMul --------------------------------------------------------------------------------------
MATMUL_BIAS = {"none": None, "vector": (7,), "row": (1, 7), "scalar": ()}


def matmul_nodes(bias: str, x: str, out: str) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    gen = rng(3)
    inits = {"W": gen.standard_normal((5, 7)).astype(F32)}
    if MATMUL_BIAS[bias] is None:
        return [oh.make_node("MatMul", [x, "W"], [out], name="mm")], inits
    inits["b"] = gen.standard_normal(MATMUL_BIAS[bias]).astype(F32)
    nodes = [
        oh.make_node("MatMul", [x, "W"], ["mm_out"], name="mm"),
        oh.make_node("Add", ["mm_out", "b"], [out]),
    ]
    return nodes, inits


def matmul_ref(x: np.ndarray, inits: dict[str, np.ndarray]) -> np.ndarray:
    out = x.astype(np.float64) @ inits["W"].astype(np.float64)
    return out + inits["b"].astype(np.float64) if "b" in inits else out


@pytest.mark.parametrize("bias", list(MATMUL_BIAS))
def test_matmul_then_batchnorm(bias: str) -> None:
    nodes, inits = matmul_nodes(bias, "x", "h")
    inits |= bn_params("bn", 7, rng(4))
    model = make_model([*nodes, bn_node("bn", "h", "y")], {"x": [3, 5]}, ["y"], inits)
    x = rng(5).standard_normal((3, 5)).astype(F32)
    check(model, {"x": x}, [bn_ref(matmul_ref(x, inits), inits, "bn")], 1, ["MatMul", "Add"])


@pytest.mark.parametrize("bias", list(MATMUL_BIAS))
def test_channels_last_matmul_transpose_batchnorm(bias: str) -> None:
    """Point-cloud / sequence layout: MatMul over (N, L, C), Transpose to (N, C, L), BN over C."""
    nodes, inits = matmul_nodes(bias, "x", "h")
    inits |= bn_params("bn", 7, rng(4))
    nodes += [
        oh.make_node("Transpose", ["h"], ["ht"], name="t", perm=[0, 2, 1]),
        bn_node("bn", "ht", "z"),
        oh.make_node("Relu", ["z"], ["y"]),
    ]
    model = make_model(nodes, {"x": [2, 9, 5]}, ["y"], inits)
    x = rng(5).standard_normal((2, 9, 5)).astype(F32)
    expected = np.maximum(bn_ref(matmul_ref(x, inits).transpose(0, 2, 1), inits, "bn"), 0)
    result = check(model, {"x": x}, [expected], 1, ["MatMul", "Add", "Transpose", "Relu"])
    assert result.records[0].into[0] == "mm"


def test_batchnorm_over_the_wrong_axis_of_a_matmul_is_frozen() -> None:
    """BN over axis 1 of a (N, L, C) MatMul output normalises L, not MatMul's output channels."""
    nodes, inits = matmul_nodes("none", "x", "h")
    inits |= bn_params("bn", 9, rng(4))
    model = make_model([*nodes, bn_node("bn", "h", "y")], {"x": [2, 9, 5]}, ["y"], inits)
    x = rng(5).standard_normal((2, 9, 5)).astype(F32)
    result = check(model, {"x": x}, [bn_ref(matmul_ref(x, inits), inits, "bn")], 0, ["MatMul", "Mul", "Add"])
    assert "MatMul 'mm' has its channels on its last axis (2), not on axis 1" in str(result.records[0].reason)


def test_batchnorm_then_matmul() -> None:
    nodes, inits = matmul_nodes("none", "h", "y")
    inits |= bn_params("bn", 5, rng(4))
    model = make_model([bn_node("bn", "x", "h"), *nodes], {"x": [3, 5]}, ["y"], inits)
    x = rng(5).standard_normal((3, 5)).astype(F32)
    expected = matmul_ref(bn_ref(x.astype(np.float64), inits, "bn"), inits)
    result = check(model, {"x": x}, [expected], 1, ["MatMul", "Add"])
    assert result.records[0].how == "backward"


# ---- Mul/Add constants after a layer ---------------------------------------------------------------
def conv_setup(gen: np.random.Generator, c_out: int = 4) -> dict[str, np.ndarray]:
    return {
        "W": gen.standard_normal((c_out, 3, 3, 3)).astype(F32),
        "B": gen.standard_normal(c_out).astype(F32),
    }


def conv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, **kw: Any) -> np.ndarray:
    bias = None if b is None else torch.from_numpy(b.astype(np.float64))
    args = (torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w.astype(np.float64)), bias)
    return F.conv2d(*args, **kw).numpy()


@pytest.mark.parametrize(
    ("scale_shape", "shift_shape", "constant_first"),
    [
        ((4, 1, 1), (4, 1, 1), False),
        ((1, 4, 1, 1), (1, 4, 1, 1), True),
        ((), (4, 1, 1), False),
        ((1,), (), True),
    ],
)
def test_mul_add_after_conv(scale_shape: tuple[int, ...], shift_shape: tuple[int, ...], constant_first: bool) -> None:
    gen = rng(8)
    inits = conv_setup(gen) | {
        "k": gen.standard_normal(scale_shape).astype(F32),
        "c": gen.standard_normal(shift_shape).astype(F32),
    }
    mul_inputs, add_inputs = (["k", "h"], ["c", "m"]) if constant_first else (["h", "k"], ["m", "c"])
    nodes = [
        oh.make_node("Conv", ["x", "W", "B"], ["h"], name="conv"),
        oh.make_node("Mul", mul_inputs, ["m"], name="frozen_bn"),
        oh.make_node("Add", add_inputs, ["y"]),
    ]
    model = make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], inits)
    x = rng(9).standard_normal((1, 3, 6, 6)).astype(F32)
    k, c = f64(inits["k"], inits["c"])
    expected = conv_ref(x, inits["W"], inits["B"]) * (k.reshape(-1, 1, 1) if k.ndim else k) + c.reshape(c.shape)
    result = check(model, {"x": x}, [expected], 1, ["Conv"])
    assert (result.records[0].kind, result.records[0].name, result.records[0].into) == (
        "Mul/Add",
        "frozen_bn",
        ["conv"],
    )


def test_frozen_batchnorm_expression_after_conv() -> None:
    """FrozenBatchNorm2d exported without constant folding: its scale and shift are computed in the graph."""
    gen = rng(10)
    inits = conv_setup(gen) | bn_params("fbn", 4, gen) | {"eps": np.array(1e-5, F32), "axes": np.array([1, 2])}
    nodes = [
        oh.make_node("Conv", ["x", "W", "B"], ["h"], name="conv"),
        oh.make_node("Add", ["fbn.var", "eps"], ["v_eps"]),
        oh.make_node("Sqrt", ["v_eps"], ["std"]),
        oh.make_node("Div", ["fbn.scale", "std"], ["s"]),
        oh.make_node("Mul", ["fbn.mean", "s"], ["ms"]),
        oh.make_node("Sub", ["fbn.bias", "ms"], ["t"]),
        oh.make_node("Unsqueeze", ["s", "axes"], ["s3"]),
        oh.make_node("Unsqueeze", ["t", "axes"], ["t3"]),
        oh.make_node("Mul", ["h", "s3"], ["m"], name="fbn_mul"),
        oh.make_node("Add", ["m", "t3"], ["y"]),
    ]
    model = make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], inits)
    x = rng(9).standard_normal((1, 3, 6, 6)).astype(F32)
    expected = bn_ref(conv_ref(x, inits["W"], inits["B"]), inits, "fbn")
    check(model, {"x": x}, [expected], 1, ["Conv"])


def test_mul_add_after_channels_last_matmul() -> None:
    nodes, inits = matmul_nodes("vector", "x", "h")
    gen = rng(11)
    inits |= {"k": gen.standard_normal(7).astype(F32), "c": gen.standard_normal((1, 1, 7)).astype(F32)}
    nodes += [oh.make_node("Mul", ["h", "k"], ["m"], name="scale"), oh.make_node("Add", ["m", "c"], ["y"])]
    model = make_model(nodes, {"x": [2, 3, 5]}, ["y"], inits)
    x = rng(5).standard_normal((2, 3, 5)).astype(F32)
    k, c = f64(inits["k"], inits["c"])
    check(model, {"x": x}, [matmul_ref(x, inits) * k + c], 1, ["MatMul", "Add"])


def test_mul_add_that_is_not_per_channel_is_left_alone() -> None:
    gen = rng(12)
    inits = conv_setup(gen) | {"k": gen.standard_normal((1, 1, 4)).astype(F32), "c": np.array(0.5, F32)}
    nodes = [
        oh.make_node("Conv", ["x", "W", "B"], ["h"], name="conv"),
        oh.make_node("Mul", ["h", "k"], ["m"]),
        oh.make_node("Add", ["m", "c"], ["y"]),
    ]
    model = make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], inits)
    x = rng(9).standard_normal((1, 3, 6, 6)).astype(F32)
    expected = conv_ref(x, inits["W"], inits["B"]) * inits["k"].astype(np.float64) + 0.5
    result = check(model, {"x": x}, [expected], 0, ["Conv", "Mul", "Add"])
    assert result.records == []
