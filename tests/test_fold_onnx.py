"""fold_onnx on models exported by the TorchScript ONNX exporter, against the torch module in float64.

Every case asserts the four things: how many BNs were folded (records), which nodes are left (no
BatchNormalization, no stray Mul/Add where the fold is exact), the ONNX checker (with strict shape
inference), and onnxruntime on the folded model against an independent float64 reference.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from bnfold.errors import FoldError
from bnfold.fold.onnx import OnnxFoldResult, fold_onnx
from bnfold.fold.onnx.testing import assert_numerically_equal

M = TypeVar("M", bound=nn.Module)
BATCHNORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def export(module: nn.Module, *args: torch.Tensor) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, buffer, dynamo=False, do_constant_folding=False)  # type: ignore[arg-type]
    return onnx.load_from_string(buffer.getvalue())


def randomise(module: M, seed: int = 0) -> M:
    """Give every BatchNorm statistics and affine parameters far from the identity."""
    gen = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            n = layer.num_features
            values = {
                "running_mean": torch.randn(n, generator=gen),
                "running_var": torch.rand(n, generator=gen) + 0.5,
                "weight": torch.randn(n, generator=gen),
                "bias": torch.randn(n, generator=gen),
            }
            with torch.no_grad():
                for name, value in values.items():
                    getattr(layer, name).copy_(value)
    return module.eval()


def reference(module: nn.Module, *args: torch.Tensor) -> list[np.ndarray]:
    """The unfolded module in float64: the independent reference."""
    wide = copy.deepcopy(module).double().eval()
    with torch.no_grad():
        out = wide(*(a.double() for a in args))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def check_fold(module: nn.Module, args: tuple[torch.Tensor, ...], folded: int, expect_ops: list[str]) -> OnnxFoldResult:
    model = export(module, *args)
    result = fold_onnx(model, "muladd")
    assert sum(r.action == "folded" for r in result.records) == folded, [r.describe() for r in result.records]
    assert ops(result.model) == expect_ops
    assert [v.name for v in result.model.graph.input] == [v.name for v in model.graph.input]
    assert [v.name for v in result.model.graph.output] == [v.name for v in model.graph.output]
    onnx.checker.check_model(result.model, full_check=True)
    feeds = {model.graph.input[i].name: a.numpy() for i, a in enumerate(args)}
    assert_numerically_equal(result.model, feeds, reference(module, *args))
    return result


def inputs(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- forward --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("eps", [1e-5, 1e-1])
def test_forward_into_conv(dim: int, groups: int, bias: bool, transposed: bool, eps: float) -> None:
    kind = f"ConvTranspose{dim}d" if transposed else f"Conv{dim}d"
    extra = {"stride": 2, "output_padding": 1} if transposed else {}
    conv = getattr(nn, kind)(4, 6, 3, padding=1, groups=groups, bias=bias, **extra)
    module = randomise(nn.Sequential(conv, BATCHNORMS[dim](6, eps=eps)), seed=dim)
    op = "ConvTranspose" if transposed else "Conv"
    result = check_fold(module, (inputs(2, 4, *[5] * dim),), 1, [op])
    (record,) = result.records
    assert (record.kind, record.how, record.into, record.channels) == (
        "BatchNormalization",
        "forward",
        ["0"],
        6,
    )


def test_chain_folds_completely() -> None:
    module = randomise(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.BatchNorm2d(8), nn.ReLU()))
    check_fold(module, (inputs(1, 3, 7, 7),), 2, ["Conv", "Relu"])


def test_fresh_batchnorm_deduplicated_through_identity() -> None:
    """A BN fresh from __init__ has γ = σ² = 1 and β = μ = 0; the exporter shares them via Identity."""
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    check_fold(module, (inputs(1, 3, 6, 6),), 1, ["Conv"])


@pytest.mark.parametrize("bias", [True, False])
def test_forward_into_linear(bias: bool) -> None:
    """With a bias the exporter writes Gemm; without, MatMul(x, Transpose(W)), which gains a bias Add."""
    module = randomise(nn.Sequential(nn.Linear(6, 5, bias=bias), nn.BatchNorm1d(5), nn.ReLU()))
    check_fold(module, (inputs(4, 6),), 1, ["Gemm", "Relu"] if bias else ["MatMul", "Add", "Relu"])


class PointMLP(nn.Module):
    """Channels-last point features: Linear over (N, L, C), then BN1d over the channels."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 7, bias=bias)
        self.bn = nn.BatchNorm1d(7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.fc(x).transpose(1, 2)))


@pytest.mark.parametrize("bias", [True, False])
def test_forward_through_transpose_into_matmul(bias: bool) -> None:
    module = randomise(PointMLP(bias))
    result = check_fold(module, (inputs(2, 9, 5),), 1, ["MatMul", "Add", "Transpose", "Relu"])
    assert result.records[0].how == "forward"


class Branches(nn.Module):
    def __init__(self, concat: bool) -> None:
        super().__init__()
        self.concat = concat
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.ConvTranspose2d(2, 4, 2, stride=2, bias=False) if concat else nn.Conv2d(2, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(8 if concat else 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(y)
        return self.bn(torch.cat([a, b], 1) if self.concat else a + b)


def test_branches_of_add() -> None:
    module = randomise(Branches(concat=False))
    result = check_fold(module, (inputs(1, 3, 6, 6), inputs(1, 2, 6, 6, seed=2)), 1, ["Conv", "Conv", "Add"])
    assert (result.records[0].how, result.records[0].into) == ("branches", ["a", "b"])


def test_channel_slices_of_concat() -> None:
    module = randomise(Branches(concat=True))
    args = (inputs(1, 3, 6, 6), inputs(1, 2, 3, 3, seed=2))
    result = check_fold(module, args, 1, ["Conv", "ConvTranspose", "Concat"])
    assert (result.records[0].how, result.records[0].into) == ("concat", ["a", "b"])


# ---- identity branches ------------------------------------------------------------------------------
class IdentityBranch(nn.Module):
    """``conv(x) + bn(x)``, RepVGG's identity branch, with the conv's geometry as given."""

    def __init__(self, channels: int = 4, groups: int = 1, dilation: int = 1, **conv: object) -> None:
        super().__init__()
        padding = conv.pop("padding", dilation)
        self.conv = nn.Conv2d(channels, channels, 3, padding=padding, groups=groups, dilation=dilation, **conv)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(x)
        return self.conv(y) + self.bn(y)


@pytest.mark.parametrize(("groups", "dilation", "bias"), [(1, 1, True), (4, 1, False), (2, 2, True)])
def test_identity_branch_becomes_a_one_hot_kernel(groups: int, dilation: int, bias: bool) -> None:
    module = randomise(IdentityBranch(groups=groups, dilation=dilation, bias=bias), seed=groups)
    result = check_fold(module, (inputs(2, 4, 7, 7),), 1, ["Relu", "Conv"])
    assert (result.records[0].how, result.records[0].into) == ("identity", ["conv"])


# ---- backward -------------------------------------------------------------------------------------
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_backward_into_unpadded_conv(groups: int, bias: bool) -> None:
    conv = nn.Conv2d(6, 9, 3, stride=2, groups=groups, bias=bias)
    module = randomise(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(6), nn.BatchNorm2d(6), conv))
    result = check_fold(module, (inputs(2, 6, 7, 7),), 2, ["Relu", "Conv"])
    assert [r.how for r in result.records] == ["backward", "backward"]


@pytest.mark.parametrize("mode", ["reflect", "replicate"])  # circular: exported as Slice and Concat
def test_backward_through_a_copying_pad(mode: str) -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1, padding_mode=mode)
    module = randomise(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4), conv), seed=3)
    result = check_fold(module, (inputs(2, 4, 6, 6),), 1, ["Relu", "Pad", "Conv"])
    assert (result.records[0].how, result.records[0].into) == ("backward", ["2"])


class PadThenConv(nn.Module):
    def __init__(self, pad: tuple[int, ...], mode: str) -> None:
        super().__init__()
        self.pad, self.mode = pad, mode
        self.bn, self.conv = nn.BatchNorm2d(4), nn.Conv2d(4 + sum(pad[4:]), 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.pad(self.bn(torch.relu(x)), self.pad, mode=self.mode))


@pytest.mark.parametrize(
    ("pad", "mode", "problem"),
    [
        ((1, 1, 1, 1), "constant", "pads with constant values"),
        ((0, 0, 0, 0, 1, 1), "replicate", "pads the channel axis"),
    ],
)
def test_pad_that_changes_the_border_blocks_a_backward_fold(pad: tuple[int, ...], mode: str, problem: str) -> None:
    module = randomise(PadThenConv(pad, mode), seed=4)
    model = export(module, inputs(1, 4, 6, 6))
    result = fold_onnx(model, "muladd")
    assert result.records[0].action == "affine"
    assert problem in str(result.records[0].reason)
    feeds = {model.graph.input[0].name: inputs(1, 4, 6, 6).numpy()}
    assert_numerically_equal(result.model, feeds, reference(module, inputs(1, 4, 6, 6)))


def test_backward_into_linear() -> None:
    module = randomise(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(6), nn.Linear(6, 3)))
    check_fold(module, (inputs(4, 6),), 1, ["Relu", "Gemm"])


# ---- kept as a frozen affine, with a reason ------------------------------------------------------
def only_record(result: OnnxFoldResult, action: str) -> str:
    (record,) = result.records
    assert record.action == action
    assert record.reason
    return record.reason


def test_padded_consumer_is_not_folded() -> None:
    module = randomise(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1)))
    result = check_fold(module, (inputs(1, 4, 5, 5),), 0, ["Relu", "Mul", "Add", "Conv"])
    reason = only_record(result, "affine")
    assert "2 pads its input with zeros (pads=[1, 1, 1, 1]): folded backward" in reason
    assert "its input comes from Relu '/0/Relu', which has no weights to fold into" in reason


class SharedOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.relu(self.bn(y)) + y


def test_shared_producer_output_is_not_folded() -> None:
    result = check_fold(randomise(SharedOutput()), (inputs(1, 3, 6, 6),), 0, ["Conv", "Mul", "Add", "Relu", "Add"])
    assert "output of Conv '/conv/Conv' also feeds '/Add'" in only_record(result, "affine")


def test_batchnorm_relu_conv_is_not_folded() -> None:
    module = randomise(nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1)))
    result = check_fold(module, (inputs(1, 3, 4, 4),), 0, ["Mul", "Add", "Relu", "Conv"])
    reason = only_record(result, "affine")
    assert "comes from the model input 'input.1', which has no weights to fold into" in reason
    assert "its output feeds Relu '/1/Relu', which is not a conv or linear" in reason


# ---- statistics, inputs, external data ------------------------------------------------------------
@pytest.mark.parametrize(
    ("stat", "value", "problem"),
    [
        ("running_var", -1.0, "negative"),
        ("running_var", float("nan"), "NaN"),
        ("running_mean", float("inf"), "Inf"),
    ],
)
def test_bad_statistics_raise(stat: str, value: float, problem: str) -> None:
    module = randomise(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    getattr(module[1], stat)[2] = value
    with pytest.raises(FoldError, match=rf"'/1/BatchNormalization'.*{problem}"):
        fold_onnx(export(module, inputs(1, 3, 5, 5)))


def test_input_model_is_not_modified() -> None:
    model = export(randomise(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))), inputs(1, 3, 5, 5))
    before = model.SerializeToString()
    fold_onnx(model, "muladd")
    assert model.SerializeToString() == before


def test_model_loaded_with_external_data(tmp_path: Path) -> None:
    module = randomise(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Linear(4, 3)))
    args = (inputs(1, 3, 6, 6),)
    path = str(tmp_path / "model.onnx")
    onnx.save(export(module, *args), path, save_as_external_data=True, size_threshold=0, location="model.data")
    result = fold_onnx(onnx.load(path))
    assert [r.action for r in result.records] == ["folded"]
    assert ops(result.model) == ["Conv", "Relu", "MatMul", "Add"]  # Transpose(W) evaluated once
    onnx.checker.check_model(result.model, full_check=True)
    assert_numerically_equal(result.model, {"input.1": args[0].numpy()}, reference(module, *args))


def test_external_data_not_loaded_is_a_fold_error(tmp_path: Path) -> None:
    module = randomise(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))
    path = str(tmp_path / "model.onnx")
    model = export(module, inputs(1, 3, 6, 6))
    onnx.save(model, path, save_as_external_data=True, size_threshold=0, location="model.data")
    with pytest.raises(FoldError, match="load_external_data=True"):
        fold_onnx(onnx.load(path, load_external_data=False))


def test_value_info_of_removed_values_is_dropped() -> None:
    module = randomise(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4)))
    args = (inputs(1, 3, 6, 6),)
    model = onnx.shape_inference.infer_shapes(export(module, *args))
    result = fold_onnx(model, "muladd")
    produced = {name for node in result.model.graph.node for name in node.output}
    assert {v.name for v in result.model.graph.value_info} <= produced
    assert [r.action for r in result.records] == ["folded", "affine"]
    assert ops(result.model) == ["Conv", "Relu", "Mul", "Add"]
    onnx.checker.check_model(result.model, full_check=True)
    assert_numerically_equal(result.model, {"input.1": args[0].numpy()}, reference(module, *args))


def test_frozen_affine_defaults_to_a_batchnorm_with_identity_statistics() -> None:
    module = randomise(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1)))
    args = (inputs(2, 3, 4, 4),)
    model = export(module, *args)
    result = fold_onnx(model)
    assert [r.action for r in result.records] == ["affine"]
    bn = next(n for n in result.model.graph.node if n.op_type == "BatchNormalization")
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    np.testing.assert_array_equal(stored[bn.input[3]], 0.0)
    np.testing.assert_array_equal(stored[bn.input[4]], 1.0)
    assert {a.name: a.f for a in bn.attribute} == {"epsilon": 0.0}
    feeds = {model.graph.input[0].name: args[0].numpy()}
    assert_numerically_equal(result.model, feeds, reference(module, *args))
