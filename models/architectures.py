"""Architectures of the sample models, as factories that take no required arguments.

Importable both as ``models.architectures`` from the repository root and as plain ``architectures``
with ``models/`` on ``sys.path``. Every BatchNorm directly follows the layer it normalises, so each
one is foldable forward into its producer.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DigitsCNN", "TabularMLP", "digits_cnn", "tabular_mlp"]


def _conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU())


class DigitsCNN(nn.Module):
    """Small CNN for the 8x8 scikit-learn digits: (N, 1, 8, 8) float32 in, 10 logits out.

    Covers the conv variants a fold must handle: a biased stem conv, a depthwise conv
    (``groups == channels``), bias-free pointwise and strided convs, each followed by BatchNorm2d.
    """

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(1, 16, 3, bias=True)
        self.depthwise = _conv_bn_relu(16, 16, 3, groups=16)
        self.pointwise = _conv_bn_relu(16, 32, 1)
        self.down = _conv_bn_relu(32, 32, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.pointwise(self.depthwise(self.stem(x))))
        return self.head(torch.flatten(self.pool(x), 1))


class TabularMLP(nn.Module):
    """Two hidden Linear+BatchNorm1d+ReLU blocks and a Linear head: (N, in_features) in, logits out."""

    def __init__(self, in_features: int = 30, classes: int = 2, hidden: tuple[int, int] = (32, 16)) -> None:
        super().__init__()
        self.hidden1 = nn.Sequential(nn.Linear(in_features, hidden[0]), nn.BatchNorm1d(hidden[0]), nn.ReLU())
        self.hidden2 = nn.Sequential(nn.Linear(hidden[0], hidden[1]), nn.BatchNorm1d(hidden[1]), nn.ReLU())
        self.head = nn.Linear(hidden[1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden2(self.hidden1(x)))


def digits_cnn() -> DigitsCNN:
    """A fresh, untrained :class:`DigitsCNN` for the 10-class digits data."""
    return DigitsCNN()


def tabular_mlp(in_features: int = 30, classes: int = 2) -> TabularMLP:
    """A fresh, untrained :class:`TabularMLP`; the defaults fit scikit-learn's breast cancer data."""
    return TabularMLP(in_features, classes)
