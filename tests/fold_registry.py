"""The registry of test models every fold engine must agree on: each placement the fold handles, the
must-not-fold cases, and the sample models of ``models/``.

Each entry builds a model (BatchNorm statistics randomised, eval mode) and its example inputs. The
conformance test (``test_fold_conformance.py``) drives every entry through each input format bnfold reads
(a torch.export program, a TorchScript archive, ONNX files from both of torch's exporters) and compares the
records.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from fold_models import (
    ACBlock,
    ChannelScale,
    ChannelsLast,
    DenseBlock,
    FrozenBatchNorm2d,
    FunctionalBN,
    MixConv,
    RepVGGBlock,
    ReusedConv,
    SharedOutput,
    image,
    randn,
    randomise,
)
from test_fold_computed_weights import BatchNormStdConv
from test_fold_inplace import InPlaceMobileOne, InPlaceRepVGG
from test_fold_rules_moves import BNCircularConv, BNUpConv, ChannelSlice, Chomp, FlattenToBN1d
from torch import nn

MODELS = Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class Entry:
    """One registry model: ``build()`` returns the model in eval mode and its example inputs."""

    name: str
    build: Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]


def _seq(*layers: nn.Module, seed: int = 0) -> nn.Module:
    return randomise(nn.Sequential(*layers), seed=seed)


class IdentityAtInput(nn.Module):
    """A RepVGG identity branch whose input is the model input: conv(x) + bn(x)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.bn(x)


class SharedChannelScale(nn.Module):
    """conv → BN (which folds), then a per-channel Mul and Add that cannot fold (their input is also read by
    the sum): the Mul/Add stays in the model as written, and is no BatchNorm left behind."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        gen = torch.Generator().manual_seed(27)
        self.register_buffer("scale", torch.randn(4, 1, 1, generator=gen))
        self.register_buffer("shift", torch.randn(4, 1, 1, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return torch.relu(y * self.scale + self.shift) + y


class ChannelGain(nn.Module):
    """conv, then a per-channel constant Mul alone (a layer scale, as in ConvNeXt)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("gain", torch.randn(4, 1, 1, generator=torch.Generator().manual_seed(28)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.gain


class ChannelOffset(nn.Module):
    """conv, then the Add of a per-channel constant alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("offset", torch.randn(4, 1, 1, generator=torch.Generator().manual_seed(30)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.offset


class LinearScale(nn.Module):
    """Linear on (N, L, C), then a per-feature constant Mul and Add along the last axis (a layer scale)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 6)
        gen = torch.Generator().manual_seed(29)
        self.register_buffer("scale", torch.randn(6, generator=gen))
        self.register_buffer("shift", torch.randn(6, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale + self.shift


class ConcatBatchAxis(nn.Module):
    """Two convs concatenated along the height axis, then one BN over the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.cat([self.a(x), self.b(x)], 2))


class BnReluConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.bn(x)))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn, self.a, self.b = nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 2, 3, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.bn(x)
        return self.a(y), self.b(y)


class TiedConvs(nn.Module):
    """Two convs sharing one weight (``b.weight = a.weight``), a BN after ``a``: the exporters store the weight
    once, under one name, and the record must still name ``a``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.a(x)) + self.b(x)


def _sample(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    if str(MODELS) not in sys.path:
        sys.path.insert(0, str(MODELS))
    architectures = importlib.import_module("architectures")
    model = randomise(getattr(architectures, name)(), seed=3)
    inputs = (image(2, 1, size=8),) if name == "digits_cnn" else (randn(4, 30),)
    return model, inputs


def _entries() -> list[Entry]:
    e: list[tuple[str, Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]]] = [
        # forward into the producer
        ("conv2d_bn", lambda: (_seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), seed=1), (image(2, 3),))),
        ("conv1d_bn_nobias", lambda: (_seq(nn.Conv1d(4, 4, 3, bias=False), nn.BatchNorm1d(4), seed=2), (image(1, 4),))),
        (
            "conv3d_depthwise_bn",
            lambda: (_seq(nn.Conv3d(4, 4, 3, groups=4), nn.BatchNorm3d(4), seed=3), (image(3, 4, size=5),)),
        ),
        (
            "convtranspose_grouped_bn",
            lambda: (_seq(nn.ConvTranspose2d(4, 6, 3, groups=2), nn.BatchNorm2d(6), seed=4), (image(2, 4, size=4),)),
        ),
        ("linear_bn1d", lambda: (_seq(nn.Linear(5, 6), nn.BatchNorm1d(6), seed=5), (randn(8, 5),))),
        (
            "conv_bn_bn",
            lambda: (_seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4), seed=6), (image(2, 3),)),
        ),
        ("channels_last_transpose", lambda: (randomise(ChannelsLast(), seed=7), (randn(2, 7, 5),))),
        ("channels_last_permute", lambda: (randomise(ChannelsLast(permute=True), seed=8), (randn(2, 7, 5),))),
        ("acnet_branches", lambda: (randomise(ACBlock(), seed=9), (image(2, 3),))),
        ("mixconv_concat", lambda: (randomise(MixConv(), seed=10), (image(2, 3),))),
        ("repvgg_block", lambda: (randomise(RepVGGBlock(), seed=11), (image(2, 4),))),
        ("repvgg_in_place", lambda: (randomise(InPlaceRepVGG(), seed=25), (image(2, 4),))),
        ("mobileone_in_place", lambda: (randomise(InPlaceMobileOne(groups=4), seed=26), (image(2, 4),))),
        ("identity_at_input", lambda: (randomise(IdentityAtInput(), seed=12), (image(2, 4),))),
        ("reused_conv", lambda: (randomise(ReusedConv(), seed=13), (image(2, 3),))),
        ("functional_bn", lambda: (FunctionalBN().eval(), (image(2, 3),))),
        ("frozen_bn", lambda: (nn.Sequential(nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4)).eval(), (image(2, 3),))),
        ("channel_scale", lambda: (ChannelScale().eval(), (image(2, 3),))),
        ("channel_scale_shared", lambda: (randomise(SharedChannelScale(), seed=27), (image(2, 3),))),
        ("channel_gain", lambda: (randomise(ChannelGain(), seed=28), (image(2, 3),))),
        ("linear_feature_scale", lambda: (randomise(LinearScale(), seed=29), (randn(2, 7, 5),))),
        ("channel_offset", lambda: (randomise(ChannelOffset(), seed=30), (image(2, 3),))),
        ("tied_conv_weights", lambda: (randomise(TiedConvs(), seed=33), (image(2, 3),))),
        (
            "std_conv_bn",  # timm's StdConv2d: F.batch_norm standardises the weight, a constant
            lambda: (_seq(BatchNormStdConv(3, 4, 3, bias=False), nn.BatchNorm2d(4), seed=39), (image(2, 3),)),
        ),
        ("tcn_chomp", lambda: (randomise(Chomp(), seed=34), (randn(2, 4, 12),))),  # through moves
        ("flatten_to_bn1d", lambda: (randomise(FlattenToBN1d(), seed=35), (image(2, 3, size=8),))),
        # backward into the consumer
        ("bn_conv_unpadded", lambda: (_seq(nn.BatchNorm2d(4), nn.Conv2d(4, 8, 3), seed=14), (image(2, 4),))),
        (
            "bn_conv_reflect",
            lambda: (
                _seq(nn.BatchNorm2d(4), nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"), seed=15),
                (image(2, 4),),
            ),
        ),
        (
            "bn_linear",
            lambda: (_seq(nn.BatchNorm1d(5), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2), seed=16), (randn(6, 5),)),
        ),
        ("bn_two_heads", lambda: (randomise(TwoHeads(), seed=17), (image(2, 3),))),
        (
            "bn_dropout_linear",  # a classifier head: the dropout is the identity at inference
            lambda: (_seq(nn.BatchNorm1d(6), nn.Dropout(0.3), nn.Linear(6, 3), seed=31), (randn(5, 6),)),
        ),
        (
            "bn_dropout2d_conv",
            lambda: (_seq(nn.BatchNorm2d(4), nn.Dropout2d(0.2), nn.Conv2d(4, 5, 3), seed=32), (image(2, 4),)),
        ),
        ("bn_upsample_conv", lambda: (randomise(BNUpConv(), seed=37), (image(2, 3),))),
        ("bn_conv_circular", lambda: (randomise(BNCircularConv(), seed=40), (image(2, 3),))),  # slices + Concats
        (
            "frozen_bn_after_relu",
            lambda: (nn.Sequential(nn.ReLU(), FrozenBatchNorm2d(3), nn.Conv2d(3, 4, 3)).eval(), (image(2, 3),)),
        ),
        # must not fold
        ("shared_output", lambda: (randomise(SharedOutput(), seed=18), (image(2, 3),))),
        ("bn_relu_conv", lambda: (randomise(BnReluConv(), seed=19), (image(2, 3),))),
        (
            "bn_convtranspose",
            lambda: (_seq(nn.BatchNorm2d(3), nn.ConvTranspose2d(3, 4, 3, stride=2), seed=20), (image(2, 3),)),
        ),
        (
            "bn_conv_zero_padded",
            lambda: (_seq(nn.BatchNorm2d(4), nn.Conv2d(4, 8, 3, padding=1), seed=21), (image(2, 4),)),
        ),
        ("concat_height_axis", lambda: (randomise(ConcatBatchAxis(), seed=22), (image(2, 3),))),
        ("channel_slice", lambda: (randomise(ChannelSlice(), seed=38), (image(2, 3, size=8),))),
        (
            "batch_statistics",
            lambda: (_seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), seed=23), (image(2, 3),)),
        ),
        ("densenet_block", lambda: (randomise(DenseBlock(), seed=24), (image(2, 3),))),
        # (a BN nothing reads is not here: both ONNX exporters drop it, so only a .pt2 still holds it)
        # the sample models
        ("digits_cnn", lambda: _sample("digits_cnn")),
        ("tabular_mlp", lambda: _sample("tabular_mlp")),
    ]
    return [Entry(name, build) for name, build in e]


REGISTRY: list[Entry] = _entries()
BY_NAME = {entry.name: entry for entry in REGISTRY}
