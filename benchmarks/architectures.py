"""Benchmark architectures: small re-implementations of four ImageNet classifiers, with their real layout.

torchvision is not a dependency, so the layer counts and widths are written out here:

* ``resnet50``      torchvision ResNet-50 (v1.5: stride on the 3x3), 53 BatchNorms, 25.6 M parameters
* ``mobilenet_v2``  torchvision MobileNetV2 (width 1.0), 52 BatchNorms, 3.5 M parameters
* ``densenet121``   torchvision DenseNet-121 (growth 32, blocks 6-12-24-16), 121 BatchNorms, 8.0 M parameters
* ``repvgg_a0``     RepVGG-A0 in its training form (3x3+BN, 1x1+BN and identity-BN branches), 61 BatchNorms

Weights are random, and :func:`randomise_batchnorms` gives every BatchNorm non-trivial running statistics
and affine parameters, so a fold has real work to do. :func:`without_batchnorm` makes the BN-free twin of a
model (every BatchNorm replaced by ``nn.Identity``): not equivalent, but the speed limit of any fold.
``SHALLOW`` holds depth-reduced variants (same blocks and widths, fewer of them) for ``run.py --quick``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "BLOCKS",
    "SHALLOW",
    "build",
    "count_batchnorms",
    "randomise_batchnorms",
    "without_batchnorm",
]


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """A bias-free conv with "same" padding and its BatchNorm."""
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


# ResNet-50 ------------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4; a conv+BN shortcut when the shape changes."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = conv_bn(cin, width, 1)
        self.conv2, self.bn2 = conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = conv_bn(width, cout, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet50(nn.Module):
    def __init__(self, classes: int = 1000, blocks: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(3, 64, 7, 2)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for i, count in enumerate(blocks):
            width = 64 * 2**i
            stage = []
            for j in range(count):
                stage.append(Bottleneck(cin, width, 2 if j == 0 and i > 0 else 1))
                cin = width * 4
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# MobileNetV2 ----------------------------------------------------------------------------------------


def conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(*conv_bn(cin, cout, kernel, stride, groups), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """Expand 1x1 (unless t = 1), depthwise 3x3, linear 1x1 projection; a residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [conv_bn_relu6(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden), *conv_bn(hidden, cout, 1)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, classes: int = 1000, settings: tuple[tuple[int, int, int, int], ...] = SETTINGS) -> None:
        super().__init__()
        features: list[nn.Module] = [conv_bn_relu6(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in settings:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# DenseNet-121 ---------------------------------------------------------------------------------------


class DenseLayer(nn.Module):
    """Pre-activation: BN-ReLU-1x1 conv (to 4 x growth), BN-ReLU-3x3 conv (to growth), on the concat."""

    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, cin: int, growth: int, bn_size: int) -> None:
        super().__init__({f"denselayer{i + 1}": DenseLayer(cin + i * growth, growth, bn_size) for i in range(layers)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2, 2)
        )


class DenseNet121(nn.Module):
    def __init__(
        self,
        classes: int = 1000,
        growth: int = 32,
        blocks: tuple[int, ...] = (6, 12, 24, 16),
        init_features: int = 64,
        bn_size: int = 4,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, init_features, 7, 2, 3, bias=False),
            nn.BatchNorm2d(init_features),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]
        channels = init_features
        for i, count in enumerate(blocks):
            layers.append(DenseBlock(count, channels, growth, bn_size))
            channels += count * growth
            if i != len(blocks) - 1:
                layers.append(Transition(channels, channels // 2))
                channels //= 2
        layers.append(nn.BatchNorm2d(channels))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu(self.features(x))
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.classifier(torch.flatten(x, 1))


# RepVGG-A0 (training-time form) ----------------------------------------------------------------------


class RepVGGBlock(nn.Module):
    """ReLU(BN(conv3x3 x) + BN(conv1x1 x) + BN(x)); the identity branch exists at stride 1, C_in = C_out."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.rbr_dense = nn.Sequential(*conv_bn(cin, cout, 3, stride))
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))
        self.rbr_identity = nn.BatchNorm2d(cin) if stride == 1 and cin == cout else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.relu(out)


class RepVGG(nn.Module):
    """RepVGG-A0: stages of 1, 2, 4, 14, 1 blocks, widths 48, 48, 96, 192, 1280 (a = 0.75, b = 2.5)."""

    def __init__(
        self,
        classes: int = 1000,
        blocks: tuple[int, ...] = (2, 4, 14, 1),
        widths: tuple[int, ...] = (48, 96, 192, 1280),
        stem: int = 48,
    ) -> None:
        super().__init__()
        self.stage0 = RepVGGBlock(3, stem, 2)
        cin, stages = stem, []
        for count, width in zip(blocks, widths, strict=True):
            stage = []
            for j in range(count):
                stage.append(RepVGGBlock(cin, width, 2 if j == 0 else 1))
                cin = width
            stages.append(nn.Sequential(*stage))
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.linear = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stage0(x)))))
        return self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ShuffleBlock(nn.Module):
    """ShuffleNetV2 unit at stride 1: split the channels, 1x1-BN-ReLU, depthwise 3x3-BN, 1x1-BN-ReLU on one
    half, concatenate, shuffle the channels (reshape, transpose, reshape)."""

    def __init__(self, channels: int = 58) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            *conv_bn(half, half, 1), nn.ReLU(), *conv_bn(half, half, 3, groups=half), *conv_bn(half, half, 1), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        y = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleNetV2Blocks(nn.Module):
    """A stem conv-BN-ReLU and four ShuffleNetV2 units (116 channels): the channel-shuffle shape arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 116, 3, stride=2), nn.ReLU())
        self.units = nn.Sequential(*(ShuffleBlock(116) for _ in range(4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.units(self.stem(x))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block, no BatchNorm at all: depthwise 7x7 (reflect padding), LayerNorm over channels-last,
    1x1 up 4x, GELU, 1x1 down, layer scale, residual."""

    def __init__(self, channels: int = 96) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 7, padding=3, groups=channels, padding_mode="reflect")
        self.norm = nn.LayerNorm(channels)
        self.up, self.down = nn.Linear(channels, 4 * channels), nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), 1e-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.gamma * self.down(nn.functional.gelu(self.up(y)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtBlocks(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 96, 4, stride=4), *(ConvNeXtBlock(96) for _ in range(3)))


# Helpers --------------------------------------------------------------------------------------------

ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "resnet50": ResNet50,
    "mobilenet_v2": MobileNetV2,
    "densenet121": DenseNet121,
    "repvgg_a0": RepVGG,
}


# Depth-reduced variants for --quick: the same blocks and widths, fewer of them.
SHALLOW: dict[str, Callable[[], nn.Module]] = {
    "resnet50": lambda: ResNet50(blocks=(1, 1, 1, 1)),
    "mobilenet_v2": lambda: MobileNetV2(settings=tuple((t, c, 1, s) for t, c, _, s in MobileNetV2.SETTINGS)),
    "densenet121": lambda: DenseNet121(blocks=(2, 2, 2, 2)),
    "repvgg_a0": lambda: RepVGG(blocks=(1, 2, 2, 1)),
}


# Blocks for graph measurements (benchmarks/nodes.py), not for the timing targets.
BLOCKS: dict[str, Callable[[], nn.Module]] = {
    "shufflenet_v2_blocks": ShuffleNetV2Blocks,
    "convnext_blocks": ConvNeXtBlocks,
}


def randomise_batchnorms(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters (in place; returns the model).

    Means in [-0.2, 0.2], variances in [0.5, 2], scales in [0.5, 1.5], shifts in [-0.2, 0.2]: far enough
    from (0, 1, 1, 0) that every fold changes the weights, close enough that activations stay finite
    through 100+ layers of random weights.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                for tensor, low, high in (
                    (module.running_mean, -0.2, 0.2),
                    (module.running_var, 0.5, 2.0),
                    (module.weight, 0.5, 1.5),
                    (module.bias, -0.2, 0.2),
                ):
                    assert tensor is not None, "every benchmark BatchNorm is affine and tracks statistics"
                    tensor.copy_(_uniform(n, low, high, generator))
    return model


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def build(name: str, seed: int = 0, shallow: bool = False) -> nn.Module:
    """The architecture ``name`` (``shallow``: its depth-reduced variant) with seeded random weights and
    BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = BLOCKS[name]() if name in BLOCKS else (SHALLOW if shallow else ARCHITECTURES)[name]()
    return randomise_batchnorms(model, torch.Generator().manual_seed(seed + 1)).eval()


def without_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm replaced by ``nn.Identity`` (not equivalent: a speed limit)."""
    twin = copy.deepcopy(model)
    for parent in list(twin.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, child_name, nn.Identity())
    return twin.eval()


class MinimalAffine(nn.Module):
    """A BatchNorm that cannot fold, at its cheapest: one multiply-add per element, ``x * scale + shift``."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        std = torch.sqrt(bn.running_var.double() + bn.eps)
        weight = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
        bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
        scale = weight / std
        self.register_buffer("scale", scale.float())
        self.register_buffer("shift", (bias - bn.running_mean.double() * scale).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(self.shift.view(view), x, self.scale.view(view))


def exact_limit(model: nn.Module, kept: set[str]) -> nn.Module:
    """The speed limit of any exact fold: the BN-free twin, except that the BNs named in ``kept`` (those that
    cannot fold exactly) stay as their minimal affine. Equal to ``without_batchnorm`` when every BN folds."""
    twin = copy.deepcopy(model)
    for parent_name, parent in list(twin.named_modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                setattr(parent, child_name, MinimalAffine(child) if name in kept else nn.Identity())
    return twin.eval()


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
