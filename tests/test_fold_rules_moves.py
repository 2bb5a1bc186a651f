"""Moves (``bnfold/fold/moves.py``, ``bnfold/fold/onnx/_moves.py``): ops that move or copy values without
combining them, each value in its channel. A BN folds across them forward (a TCN's chomp, ``flatten(2)``
into a BatchNorm1d, ``unsqueeze``, a token reshape, nearest upsampling) and backward, from a torch FX graph
and from ONNX files of both exporters, with a fixed and with a dynamic batch, every result matching a float64
reference of the original; an op that slices, merges or interpolates the channels is refused alike."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from fold_models import assert_matches, randn, randomise, reference, run_onnx
from onnx import helper, numpy_helper
from torch import nn

from bnfold.export import quiet
from bnfold.fold import fold
from bnfold.fold.onnx import fold_onnx
from bnfold.fold.onnx.testing import run_onnx as run_onnx_feeds
from bnfold.fold.reasons import kinds


class Chomp(nn.Module):
    """A TCN block: a causal dilated Conv1d padded on both sides, the right end chomped, then a BN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=4, dilation=2)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)[:, :, :-4].contiguous()))


class FlattenToBN1d(nn.Module):
    """A Conv2d's map flattened over its spatial axes (``N×C×HW``) into a BatchNorm1d over the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x).flatten(2))


class UnsqueezeToBN2d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x).unsqueeze(-1))


class TokenBN(nn.Module):
    """A Linear over tokens (``N×L×C``), its output reshaped to ``(N·L)×C`` for a BatchNorm1d and back."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 7)
        self.bn = nn.BatchNorm1d(7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        return self.bn(self.linear(x).reshape(-1, 7)).reshape(n, length, 7)


class Narrowed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x).narrow(2, 1, 5))


class NearestUp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.interpolate(self.conv(x), scale_factor=2, mode="nearest"))


class BNSliceConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.conv = nn.Conv1d(4, 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x)[:, :, 1:])


class BNUpConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(self.bn(x), scale_factor=2, mode="nearest"))


class BNTokenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(5)
        self.linear = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, c = x.shape
        return self.linear(self.bn(x.reshape(-1, c)).reshape(n, length, c))


class BNCircularConv(nn.Module):
    """A circular pad: the TorchScript exporter writes it as slices of the BN's output joined by Concats."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


class BNJoinedConv(nn.Module):
    """The BN's output joined along the width with another value: the joined map is no copy of it."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.bn(x), x], 3))


class ChannelSlice(nn.Module):
    """Half of a conv's channels into a BN: the slice cuts the channel axis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)[:, :4])


class FlattenAll(nn.Module):
    """``flatten(1)`` merges the channels with the pixels: a BatchNorm1d over them is per pixel too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)
        self.bn = nn.BatchNorm1d(2 * 6 * 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x).flatten(1))


class Bilinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.interpolate(self.conv(x), scale_factor=2, mode="bilinear"))


FOLDS = [
    (Chomp, (2, 4, 12), "forward", ["conv"]),
    (FlattenToBN1d, (2, 3, 8, 8), "forward", ["conv"]),
    (UnsqueezeToBN2d, (2, 4, 9), "forward", ["conv"]),
    (TokenBN, (2, 6, 5), "forward", ["linear"]),
    (NearestUp, (2, 3, 8, 8), "forward", ["conv"]),
    (Narrowed, (2, 4, 12), "forward", ["conv"]),
    (BNSliceConv, (2, 4, 12), "backward", ["conv"]),
    (BNUpConv, (2, 3, 6, 6), "backward", ["conv"]),
    (BNTokenLinear, (2, 6, 5), "backward", ["linear"]),
    (BNCircularConv, (2, 3, 6, 6), "backward", ["conv"]),
]
REFUSED = [
    (ChannelSlice, (2, 3, 8, 8), "not_whole"),
    (FlattenAll, (2, 3, 8, 8), "not_whole"),
    (Bilinear, (2, 3, 8, 8), "no_weights"),
]
EXPORTS = ["torchscript", "torchscript dynamic batch", "dynamo", "dynamo dynamic batch"]


def _onnx(model: nn.Module, x: torch.Tensor, export: str) -> onnx.ModelProto:
    dynamic = export.endswith("dynamic batch")
    with quiet(), torch.no_grad():
        if export.startswith("dynamo"):
            shapes = ({0: torch.export.Dim.AUTO},) if dynamic else None
            return torch.onnx.export(model, (x,), dynamo=True, optimize=False, dynamic_shapes=shapes).model_proto
        buffer = io.BytesIO()
        axes = {"x": {0: "batch"}} if dynamic else None
        torch.onnx.export(
            model, (x,), buffer, dynamo=False, do_constant_folding=False, input_names=["x"], dynamic_axes=axes
        )
    return onnx.load_from_string(buffer.getvalue())


def _batches(shape: tuple[int, ...], dynamic: bool) -> list[torch.Tensor]:
    return [randn(*shape, seed=1)] + ([randn(shape[0] + 3, *shape[1:], seed=2)] if dynamic else [])


@pytest.mark.parametrize(("cls", "shape", "how", "into"), FOLDS, ids=[c[0].__name__ for c in FOLDS])
def test_a_bn_folds_across_a_move_from_fx(
    cls: type[nn.Module], shape: tuple[int, ...], how: str, into: list[str]
) -> None:
    model = randomise(cls(), seed=5)
    result = fold(model, (randn(*shape, seed=1),))
    assert [(r.name, r.action, r.how, r.into) for r in result.records] == [("bn", "folded", how, into)]
    for x in _batches(shape, dynamic=True):  # the batch stays dynamic
        with torch.no_grad():
            assert_matches(result.module(x), reference(model, (x,)))


@pytest.mark.parametrize("export", EXPORTS)
@pytest.mark.parametrize(("cls", "shape", "how", "into"), FOLDS, ids=[c[0].__name__ for c in FOLDS])
def test_a_bn_folds_across_a_move_from_onnx(
    cls: type[nn.Module], shape: tuple[int, ...], how: str, into: list[str], export: str
) -> None:
    model = randomise(cls(), seed=5)
    result = fold_onnx(_onnx(model, randn(*shape, seed=1), export))
    assert [(r.name, r.action, r.how, r.into) for r in result.records] == [("bn", "folded", how, into)]
    assert all(n.op_type not in ("BatchNormalization", "Mul") for n in result.model.graph.node)
    for x in _batches(shape, export.endswith("dynamic batch")):
        expected = reference(model, (x,))
        assert isinstance(expected, torch.Tensor)
        (actual,) = run_onnx(result.model, (x,))
        np.testing.assert_allclose(actual.double().numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("cls", "shape", "kind"), REFUSED, ids=[c[0].__name__ for c in REFUSED])
def test_a_move_that_cuts_or_mixes_the_channels_is_refused_alike(
    cls: type[nn.Module], shape: tuple[int, ...], kind: str
) -> None:
    model = randomise(cls(), seed=6)
    x = randn(*shape, seed=1)
    found = [fold(model, (x,))] + [fold_onnx(_onnx(model, x, export)) for export in EXPORTS]
    for result in found:
        (record,) = result.records
        assert (record.action, kinds(record.reason)) == ("affine", [kind, "model_output"]), record.reason
    with torch.no_grad():
        assert_matches(found[0].module(x), reference(model, (x,)))
    (actual,) = run_onnx(found[-1].model, (x,))
    np.testing.assert_allclose(actual.double().numpy(), reference(model, (x,)).numpy(), rtol=1e-4, atol=1e-5)  # type: ignore[union-attr]


def test_a_bn_joined_with_another_value_does_not_fold_backward() -> None:
    model = randomise(BNJoinedConv(), seed=7)
    x = randn(2, 3, 6, 6, seed=1)
    for result in [fold(model, (x,))] + [fold_onnx(_onnx(model, x, export)) for export in EXPORTS]:
        (record,) = result.records
        assert (record.action, kinds(record.reason)) == ("affine", ["no_weights", "joined"]), record.reason


def test_a_cropping_resize_is_no_move() -> None:
    """``tf_crop_and_resize`` writes its ``extrapolation_value`` where the region reaches past the input: a
    constant, not a copy, so a BN on either side of it does not commute with it."""
    rng = np.random.default_rng(0)
    values = {
        "W": rng.standard_normal((4, 3, 3, 3)),
        "roi": np.array([0, 0, -0.5, -0.5, 1, 1, 1.5, 1.5]),
        "scales": np.array([1, 1, 2, 2]),
        **{name: rng.standard_normal(4) for name in ("g", "b", "m")},
        "v": rng.uniform(0.2, 2, 4),
    }
    initializers = [numpy_helper.from_array(v.astype(np.float32), name) for name, v in values.items()]
    crop = {"mode": "nearest", "coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": 0.0}
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["y"]),
        helper.make_node("Resize", ["y", "roi", "scales"], ["r"], **crop),
        helper.make_node("BatchNormalization", ["r", "g", "b", "m", "v"], ["out"]),
    ]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    out = helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 4, 12, 12])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [out], initializers))
    model.opset_import[0].version = 18
    result = fold_onnx(model)
    (record,) = result.records
    assert (record.action, kinds(record.reason)) == ("affine", ["no_weights", "model_output"]), record.reason
    feeds = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    expected = [np.asarray(v, np.float64) for v in run_onnx_feeds(model, feeds)]
    np.testing.assert_allclose(run_onnx_feeds(result.model, feeds)[0], expected[0], rtol=1e-5, atol=1e-5)
