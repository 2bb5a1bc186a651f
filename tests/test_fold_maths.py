"""The pure fold functions against an fp64 PyTorch reference of the unfolded layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bnfold.fold import maths

F64 = torch.float64


def _random_bn(channels: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "running_mean": torch.randn(channels, generator=gen, dtype=F64),
        "running_var": torch.rand(channels, generator=gen, dtype=F64) + 0.1,
        "weight": torch.randn(channels, generator=gen, dtype=F64),
        "bias": torch.randn(channels, generator=gen, dtype=F64),
    }


def _bn(x: torch.Tensor, p: dict[str, torch.Tensor], eps: float) -> torch.Tensor:
    return F.batch_norm(x, p["running_mean"], p["running_var"], p["weight"], p["bias"], False, 0.0, eps)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("with_bias", [True, False])
def test_forward_fold_into_conv(dim: int, groups: int, with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(dim * 10 + groups)
    conv = getattr(F, f"conv{dim}d")
    w = torch.randn(8, 8 // groups, *([3] * dim), generator=gen, dtype=F64)
    b = torch.randn(8, generator=gen, dtype=F64) if with_bias else None
    x = torch.randn(2, 8, *([5] * dim), generator=gen, dtype=F64)
    bn = _random_bn(8, gen)
    s, t = maths.batchnorm_affine(bn["running_mean"], bn["running_var"], bn["weight"], bn["bias"], 1e-3)
    w2, b2 = maths.fold_into_producer(w, b, s, t)
    expected = _bn(conv(x, w, b, padding=1, groups=groups), bn, 1e-3)
    torch.testing.assert_close(conv(x, w2, b2, padding=1, groups=groups), expected)


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_forward_fold_into_transposed_conv(groups: int) -> None:
    gen = torch.Generator().manual_seed(groups)
    w = torch.randn(8, 16 // groups, 3, 3, generator=gen, dtype=F64)
    x = torch.randn(2, 8, 4, 4, generator=gen, dtype=F64)
    bn = _random_bn(16, gen)
    s, t = maths.batchnorm_affine(bn["running_mean"], bn["running_var"], None, None, 1e-5)
    w2, b2 = maths.fold_into_transposed_producer(w, None, s, t, groups)
    bn_plain = {**bn, "weight": None, "bias": None}
    expected = _bn(F.conv_transpose2d(x, w, None, stride=2, groups=groups), bn_plain, 1e-5)
    torch.testing.assert_close(F.conv_transpose2d(x, w2, b2, stride=2, groups=groups), expected)


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_backward_fold_into_unpadded_conv(groups: int) -> None:
    gen = torch.Generator().manual_seed(100 + groups)
    w = torch.randn(16, 8 // groups, 3, 3, generator=gen, dtype=F64)
    b = torch.randn(16, generator=gen, dtype=F64)
    x = torch.randn(2, 8, 7, 7, generator=gen, dtype=F64)
    bn = _random_bn(8, gen)
    s, t = maths.batchnorm_affine(bn["running_mean"], bn["running_var"], bn["weight"], bn["bias"], 1e-5)
    w2, b2 = maths.fold_into_consumer(w, b, s, t, groups)
    expected = F.conv2d(_bn(x, bn, 1e-5), w, b, stride=2, groups=groups)
    torch.testing.assert_close(F.conv2d(x, w2, b2, stride=2, groups=groups), expected)


def test_backward_fold_into_linear() -> None:
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(5, 12, generator=gen, dtype=F64)
    x = torch.randn(4, 12, generator=gen, dtype=F64)
    bn = _random_bn(12, gen)
    s, t = maths.batchnorm_affine(bn["running_mean"], bn["running_var"], bn["weight"], bn["bias"], 1e-5)
    w2, b2 = maths.fold_into_consumer(w, None, s, t)
    torch.testing.assert_close(F.linear(x, w2, b2), F.linear(_bn(x, bn, 1e-5), w, None))


@pytest.mark.parametrize("groups", [1, 4])
def test_identity_absorption(groups: int) -> None:
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(8, 8 // groups, 3, 3, generator=gen, dtype=F64)
    x = torch.randn(2, 8, 6, 6, generator=gen, dtype=F64)
    bn = _random_bn(8, gen)
    s, t = maths.batchnorm_affine(bn["running_mean"], bn["running_var"], bn["weight"], bn["bias"], 1e-5)
    w2, b2 = maths.absorb_identity(w, None, s, t, groups)
    expected = F.conv2d(x, w, None, padding=1, groups=groups) + _bn(x, bn, 1e-5)
    torch.testing.assert_close(F.conv2d(x, w2, b2, padding=1, groups=groups), expected)


def test_fold_keeps_parameter_dtype() -> None:
    w = torch.randn(4, 3, dtype=torch.float32)
    s, t = torch.rand(4, dtype=F64) + 0.5, torch.randn(4, dtype=F64)
    w2, b2 = maths.fold_into_producer(w, None, s, t)
    assert w2.dtype == torch.float32 and b2.dtype == torch.float32


@pytest.mark.parametrize(
    ("mean", "var", "problem"),
    [
        ([0.0, float("nan")], [1.0, 1.0], "running_mean"),
        ([0.0, 0.0], [1.0, float("inf")], "running_var"),
        ([0.0, 0.0], [1.0, -2.0], "negative"),
    ],
)
def test_statistics_problem_names_the_defect(mean: list[float], var: list[float], problem: str) -> None:
    found = maths.statistics_problem(torch.tensor(mean), torch.tensor(var), 1e-5)
    assert found is not None and problem in found
    assert maths.statistics_problem(torch.zeros(2), torch.ones(2), 1e-5) is None


def test_a_zero_variance_with_a_zero_eps_divides_by_zero() -> None:
    mean, var = torch.zeros(3), torch.tensor([1.0, 0.0, 2.0])
    assert maths.statistics_problem(mean, var, 1e-5) is None
    assert (
        maths.statistics_problem(mean, var, 0.0) == "running_var + eps is 0 in 1 of 3 channels (the BN divides by zero)"
    )


def test_reasons_read_back_as_their_templates() -> None:
    from bnfold.fold.reasons import explain, kinds, reason

    forward = reason("no_weights", what="slice 0 of cat", source="relu")
    backward = reason("zero_padding", layer="conv", padding="padding=[1, 1]")
    identity = reason("identity", problems="a has stride [2, 2]; b is not a centred odd kernel")
    assert kinds(explain([forward, identity, backward])) == ["no_weights", "identity", "zero_padding"]
    assert kinds(explain([forward, forward])) == ["no_weights"]
    assert kinds("something else") == ["?"] and kinds(None) == []


def test_channel_vector_accepts_only_per_channel_constants() -> None:
    c = torch.arange(4, dtype=torch.float64)
    assert torch.equal(maths.channel_vector(c.reshape(1, 4, 1, 1), 1, 4, 4), c)
    assert torch.equal(maths.channel_vector(torch.tensor(2.0), 1, 4, 4), torch.full((4,), 2.0))
    assert torch.equal(maths.channel_vector(c, 2, 3, 4), c)  # last axis of a rank-3 value
    assert maths.channel_vector(c.reshape(1, 4, 1, 1).expand(1, 4, 2, 1), 1, 4, 4) is None  # varies along H
    assert maths.channel_vector(c.reshape(1, 1, 4, 1, 1), 1, 4, 4) is None  # would grow the rank
    assert maths.channel_vector(torch.zeros(3), 1, 2, 4) is None  # 3 values for 4 channels
    assert maths.channel_shape(1, 1, 4, 5) == [5, 1, 1]
    assert maths.channel_shape(0, 2, 3, 5) == [5]
