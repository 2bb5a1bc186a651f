"""Small models with BatchNorms in every placement the fold handles, and the checks every fold test makes.

``check_fold`` asserts, where they apply, the four things a fold test must show: how many BatchNorms were
folded, that none is left in the graph (no aten batch_norm call and no per-channel constant Mul/Add in the
folded fx graph, no BatchNormalization in the ONNX export), that the exported ONNX passes
``onnx.checker``, and that the folded fp32 module equals an independent fp64 run of the original.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnfold.fold import FoldResult, fold
from bnfold.fold.eager import overload_of
from bnfold.fold.graph import BATCHNORMS, constant
from bnfold.fold.sites import per_channel
from bnfold.verify import Tolerance, assert_allclose_report
from bnfold.verify.runners import flatten_outputs

RTOL, ATOL = 1e-4, 1e-5
aten = torch.ops.aten


# --- inputs and statistics -------------------------------------------------------------------------------


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters; returns it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm) and module.running_mean is not None:
                n = module.running_mean.numel()
                module.running_mean.copy_(torch.randn(n, generator=gen))
                module.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.2)
            if isinstance(module, _BatchNorm) and module.affine:
                module.weight.copy_(torch.randn(module.weight.numel(), generator=gen))
                module.bias.copy_(torch.randn(module.bias.numel(), generator=gen))
    return model.eval()


# --- the four checks -------------------------------------------------------------------------------------


def reference(model: nn.Module, inputs: Sequence[torch.Tensor]) -> object:
    """The original model's output computed independently in float64."""
    twin = copy.deepcopy(model).double()
    with torch.no_grad():
        return twin(*(x.double() for x in inputs))


def assert_matches(actual: object, expected: object, rtol: float = RTOL, atol: float = ATOL) -> None:
    """fp32 outputs against fp64 ones (nested tuples, lists and dicts in order), by verify's own rule
    (:func:`bnfold.verify.assert_allclose_report`, the reference on the right)."""
    got, want = flatten_outputs(actual), flatten_outputs(expected)
    assert len(got) == len(want), f"{len(got)} outputs, expected {len(want)}"
    for a, e in zip(got, want, strict=True):
        assert a.shape == e.shape, f"shape {tuple(a.shape)}, expected {tuple(e.shape)}"
    as_f64 = [t.detach().double().numpy() for t in got]
    assert_allclose_report(as_f64, [t.detach().double().numpy() for t in want], Tolerance(atol=atol, rtol=rtol))


def aten_batchnorms(gm: fx.GraphModule) -> int:
    return sum(n.op == "call_function" and overload_of(n.target) in BATCHNORMS for n in gm.graph.nodes)


def constant_affines(gm: fx.GraphModule) -> int:
    """Mul/Add calls with a per-channel constant operand: what a frozen or unfolded BN leaves behind."""
    count = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or overload_of(node.target) not in (aten.mul.Tensor, aten.add.Tensor):
            continue
        a, b = node.args[0], node.args[1]
        for x, c in ((a, b), (b, a)):
            if isinstance(x, fx.Node) and per_channel(constant(gm, c), x) is not None:
                count += 1
                break
    return count


def export_onnx(module: nn.Module, inputs: Sequence[torch.Tensor]) -> onnx.ModelProto:
    """torch.onnx.export(dynamo=True) of the folded module; the result passes onnx.checker."""
    program = torch.onnx.export(module, tuple(inputs), dynamo=True, verbose=False)
    model = program.model_proto
    onnx.checker.check_model(model, full_check=True)
    return model


def onnx_ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def onnx_constant_scales(model: onnx.ModelProto) -> int:
    """ONNX Mul nodes with a non-scalar constant operand (an initializer or a Constant node): the scale
    of a BN left as an affine. (A constant Add can be a linear's bias, split off its MatMul.)"""
    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.dims:
            sizes[node.output[0]] = numpy_helper.to_array(node.attribute[0].t).size
    return sum(
        node.op_type == "Mul" and any(sizes.get(name, 1) > 1 for name in node.input) for node in model.graph.node
    )


def run_onnx(model: onnx.ModelProto, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    return [torch.from_numpy(out) for out in session.run(None, feeds)]


def check_fold(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    folded: int,
    *,
    exact: bool = True,
    onnx_export: bool = False,
    found: int | None = None,
) -> FoldResult:
    """Fold ``model`` and assert the count folded, the graph left, onnx.checker and fp64 parity."""
    expected = reference(model, inputs)
    result = fold(model, inputs)
    assert result.counts["folded"] == folded, [r.describe() for r in result.records]
    if found is not None:
        assert result.counts["found"] == found, [r.describe() for r in result.records]
    if exact:
        assert aten_batchnorms(result.module) == 0
        assert constant_affines(result.module) == 0
    with torch.no_grad():
        assert_matches(result.module(*inputs), expected)
    if onnx_export:
        check_onnx(result, inputs, expected, exact)
    return result


def check_onnx(result: FoldResult, inputs: Sequence[torch.Tensor], expected: object, exact: bool) -> None:
    model = export_onnx(result.module, inputs)
    if exact:
        assert onnx_ops(model)["BatchNormalization"] == 0
        assert onnx_constant_scales(model) == 0
    outputs = run_onnx(model, inputs)
    assert_matches(outputs if len(outputs) > 1 else outputs[0], expected)


# --- builders --------------------------------------------------------------------------------------------


def conv_cls(dim: int, transposed: bool = False) -> type[nn.Module]:
    return getattr(nn, f"{'ConvTranspose' if transposed else 'Conv'}{dim}d")


def bn_cls(dim: int) -> type[_BatchNorm]:
    return getattr(nn, f"BatchNorm{dim}d")


def image(dim: int, channels: int, size: int = 6, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return randn(batch, channels, *([size] * dim), seed=seed)


class ChannelsLast(nn.Module):
    """(N, L, C) → linear or 1x1 Conv1d → BatchNorm1d over C (through a transpose or permute) → (N, L, C)."""

    def __init__(self, c_in: int = 5, c_out: int = 6, layer: str = "linear", permute: bool = False) -> None:
        super().__init__()
        self.layer_kind, self.permute = layer, permute
        self.layer = nn.Linear(c_in, c_out) if layer == "linear" else nn.Conv1d(c_in, c_out, 1)
        self.bn = nn.BatchNorm1d(c_out)

    def _swap(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 1) if self.permute else x.transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_kind == "linear":
            return self._swap(self.bn(self._swap(self.layer(x))))
        return self._swap(self.bn(self.layer(self._swap(x))))


class ACBlock(nn.Module):
    """ACNet: one BN over the sum of a square, a horizontal and a vertical kernel."""

    def __init__(self, c_in: int = 3, c_out: int = 4) -> None:
        super().__init__()
        self.square = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.hor = nn.Conv2d(c_in, c_out, (1, 3), padding=(0, 1), bias=False)
        self.ver = nn.Conv2d(c_in, c_out, (3, 1), padding=(1, 0))
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.square(x) + self.hor(x) + self.ver(x))


class MixConv(nn.Module):
    """MixNet: kernels of different sizes on the same input, concatenated along channels, then one BN."""

    def __init__(self, c_in: int = 3) -> None:
        super().__init__()
        self.small = nn.Conv2d(c_in, 2, 3, padding=1)
        self.large = nn.Conv2d(c_in, 3, 5, padding=2, bias=False)
        self.bn = nn.BatchNorm2d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.cat([self.small(x), self.large(x)], 1))


class RepVGGBlock(nn.Module):
    """RepVGG training-time block: 3x3 conv + BN, 1x1 conv + BN and an identity BN, summed."""

    def __init__(self, channels: int = 4, groups: int = 1) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.identity = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn3(self.conv3(x)) + self.bn1(self.conv1(x)) + self.identity(x))


class ReusedConv(nn.Module):
    """One conv called twice; only the first call is followed by a BN. Returns both paths."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.bn(self.conv(x)), self.conv(x * 2)


class SharedOutput(nn.Module):
    """conv → BN, and the conv's output also feeds the residual add: the conv cannot take the BN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class FunctionalBN(nn.Module):
    """conv → F.batch_norm (or torch.batch_norm) on registered buffers, training=False."""

    def __init__(self, aten_call: bool = False) -> None:
        super().__init__()
        self.aten_call = aten_call
        self.conv = nn.Conv2d(3, 4, 3)
        gen = torch.Generator().manual_seed(5)
        self.register_buffer("mean", torch.randn(4, generator=gen))
        self.register_buffer("var", torch.rand(4, generator=gen) + 0.3)
        self.register_buffer("gamma", torch.randn(4, generator=gen))
        self.register_buffer("beta", torch.randn(4, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.aten_call:
            return torch.batch_norm(y, self.gamma, self.beta, self.mean, self.var, False, 0.1, 1e-3, False)
        return F.batch_norm(y, self.mean, self.var, self.gamma, self.beta, False, 0.1, 1e-3)


class FrozenBatchNorm2d(nn.Module):
    """As in torchvision.ops.misc: fixed statistics and affine as buffers, computed into scale and shift."""

    def __init__(self, n: int, eps: float = 1e-5, seed: int = 3) -> None:
        super().__init__()
        self.eps = eps
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("weight", torch.randn(n, generator=gen))
        self.register_buffer("bias", torch.randn(n, generator=gen))
        self.register_buffer("running_mean", torch.randn(n, generator=gen))
        self.register_buffer("running_var", torch.rand(n, generator=gen) + 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class ChannelScale(nn.Module):
    """conv, then a per-channel constant Mul and Add (a BN someone wrote out by hand)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        gen = torch.Generator().manual_seed(9)
        self.register_buffer("scale", torch.randn(1, 4, 1, 1, generator=gen))
        self.register_buffer("shift", torch.randn(4, 1, 1, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale + self.shift


class BNThenReLU(nn.BatchNorm2d):
    """A BatchNorm subclass whose forward also applies an activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


class BNThenGain(nn.BatchNorm2d):
    """A BatchNorm subclass that multiplies by a per-channel gain after normalising."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.gain = nn.Parameter(torch.linspace(0.5, 2.0, n).reshape(1, n, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.gain


class BNThenSquash(BNThenGain):
    """A BatchNorm subclass that scales, shifts and squashes after normalising, then applies its gain."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(nn.BatchNorm2d.forward(self, x) * 2.0 + 1.0) * self.gain


class DenseBlock(nn.Module):
    """DenseNet-style: BN → ReLU → conv on growing concatenations, then a BN → ReLU → 1x1 transition."""

    def __init__(self, c_in: int = 4, growth: int = 3, layers: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c_in, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(c_in)
        self.layers = nn.ModuleList()
        for i in range(layers):
            c = c_in + i * growth
            self.layers.append(
                nn.Sequential(
                    nn.BatchNorm2d(c),
                    nn.ReLU(),
                    nn.Conv2d(c, 2 * growth, 1, bias=False),
                    nn.BatchNorm2d(2 * growth),
                    nn.ReLU(),
                    nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False),
                )
            )
        c_out = c_in + layers * growth
        self.transition = nn.Sequential(nn.BatchNorm2d(c_out), nn.ReLU(), nn.Conv2d(c_out, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [torch.relu(self.stem_bn(self.stem(x)))]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return self.transition(torch.cat(features, 1))
