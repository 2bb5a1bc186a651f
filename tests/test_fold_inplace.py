"""In-place arithmetic (``+=``, ``add_``, ``*=``, ``mul_``) and BNs nothing reads.

Published RepVGG and MobileOne blocks sum their branches in place; every BN of such a block must fold, with
parity against a float64 run of the original module.
"""

from __future__ import annotations

import pytest
import torch
from fold_models import check_fold, image, randomise
from torch import nn

from bnfold.fold import fold


def conv_bn(c_in: int, c_out: int, kernel: int, groups: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


class InPlaceRepVGG(nn.Module):
    """RepVGG's published block: ``y = dense(x); y += 1x1(x); y += identity(x)``."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.dense, self.one = conv_bn(channels, channels, 3), conv_bn(channels, channels, 1)
        self.identity = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dense(x)
        y += self.one(x)
        y += self.identity(x)
        return torch.relu(y)


class InPlaceMobileOne(nn.Module):
    """MobileOne's published block: over-parameterised k×k conv-BN branches, a 1x1 scale branch and an
    identity BN: ``out = scale(x) + skip(x)``, then ``out += conv_i(x)`` for each branch."""

    def __init__(self, channels: int = 4, branches: int = 3, groups: int = 1) -> None:
        super().__init__()
        self.rbr_skip = nn.BatchNorm2d(channels)
        self.rbr_scale = conv_bn(channels, channels, 1, groups)
        self.rbr_conv = nn.ModuleList(conv_bn(channels, channels, 3, groups) for _ in range(branches))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rbr_scale(x) + self.rbr_skip(x)
        for branch in self.rbr_conv:
            out += branch(x)
        return torch.relu(out)


def test_in_place_repvgg_block_folds_every_batchnorm() -> None:
    result = check_fold(randomise(InPlaceRepVGG(), seed=71), [image(2, 4)], folded=3, onnx_export=True)
    how = {r.name: (r.how, r.into) for r in result.records}
    assert how == {
        "dense.1": ("forward", ["dense.0"]),
        "one.1": ("forward", ["one.0"]),
        "identity": ("identity", ["dense.0"]),
    }


@pytest.mark.parametrize("groups", [1, 4])
def test_in_place_mobileone_block_folds_every_batchnorm(groups: int) -> None:
    model = randomise(InPlaceMobileOne(groups=groups), seed=72)
    result = check_fold(model, [image(2, 4)], folded=5, onnx_export=groups == 1)
    assert {r.name: r.how for r in result.records}["rbr_skip"] == "identity"


class ScaledInPlace(nn.Module):
    """conv, then ``y *= scale; y += shift`` with per-channel buffers: a BN written out in place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        gen = torch.Generator().manual_seed(73)
        self.register_buffer("scale", torch.randn(1, 4, 1, 1, generator=gen))
        self.register_buffer("shift", torch.randn(1, 4, 1, 1, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y *= self.scale
        y.add_(self.shift)
        return y


def test_in_place_per_channel_mul_add_folds() -> None:
    result = check_fold(ScaledInPlace().eval(), [image(2, 3)], folded=0, found=0)  # a Mul/Add, not a BN
    assert (result.records[0].op, result.records[0].action, result.records[0].into) == ("muladd", "folded", ["conv"])


class ObservedWrite(nn.Module):
    """``y.add_(...)`` where y is also returned: the caller sees the write, y is conv(x) + bn(x) too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        z = y.add_(self.bn(x))
        return z * 2, y


def test_observable_in_place_write_stays_exact() -> None:
    """Both outputs carry the sum, so the identity branch may go into the conv: parity on both says so."""
    check_fold(randomise(ObservedWrite(), seed=74), [image(2, 4)], folded=1)


class DeadBranch(nn.Module):
    """A BN whose result nothing uses (left over from an edit)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.unused = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.unused(y)
        return self.bn(y)


def test_batchnorm_nothing_reads_is_removed() -> None:
    result = fold(randomise(DeadBranch(), seed=75), [image(2, 3)])
    records = {r.name: r for r in result.records}
    assert (records["unused"].action, records["unused"].how) == ("folded", "removed")
    assert records["unused"].describe() == "unused → removed: its output is unused"
    assert (records["bn"].how, records["bn"].into) == ("forward", ["conv"])
