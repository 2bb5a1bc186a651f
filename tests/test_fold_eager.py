"""unboxed_calls: each aten overload and the Python binding it is swapped for compute the same, bit for bit."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import fx, nn

from bnfold import fold
from bnfold.fold.eager import BINDINGS, unboxed_calls

aten = torch.ops.aten
g = torch.Generator().manual_seed(0)


def r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


# one call per overload, with the argument kinds torch.export writes (positional, defaults spelled out)
CALLS: dict[Any, tuple[tuple[Any, ...], dict[str, Any]]] = {
    aten.conv1d.default: ((r(2, 3, 9), r(4, 3, 3), r(4), [2], [1], [1], 1), {}),
    aten.conv2d.default: ((r(2, 4, 7, 7), r(4, 1, 3, 3), None, [1, 1], [1, 1], [1, 1], 4), {}),
    aten.conv3d.default: ((r(1, 2, 5, 5, 5), r(3, 2, 3, 3, 3)), {"bias": r(3)}),
    aten.conv_transpose1d.default: ((r(2, 3, 6), r(3, 2, 3), r(2), [2], [1], [1], 1, [1]), {}),
    aten.conv_transpose2d.input: ((r(1, 4, 5, 5), r(4, 1, 3, 3), None, [2, 2], [1, 1], [0, 0], 4, [1, 1]), {}),
    aten.conv_transpose3d.input: ((r(1, 2, 3, 3, 3), r(2, 2, 2, 2, 2), r(2)), {}),
    aten.linear.default: ((r(5, 6), r(3, 6), r(3)), {}),
    aten.addmm.default: ((r(3), r(5, 6), r(6, 3)), {"beta": 0.5, "alpha": 2.0}),
    aten.matmul.default: ((r(2, 5, 6), r(6, 3)), {}),
    aten.batch_norm.default: ((r(4, 3, 5), r(3), r(3), r(3), r(3).abs() + 0.5, False, 0.1, 1e-5, False), {}),
    aten.relu.default: ((r(4, 5),), {}),
    aten.relu_.default: ((r(4, 5),), {}),
    aten.hardtanh.default: ((r(4, 5) * 8, 0.0, 6.0), {}),
    aten.hardtanh_.default: ((r(4, 5) * 8, 0.0, 6.0), {}),
    aten.leaky_relu.default: ((r(4, 5), 0.2), {}),
    aten.sigmoid.default: ((r(4, 5),), {}),
    aten.tanh.default: ((r(4, 5),), {}),
    aten.silu.default: ((r(4, 5),), {}),
    aten.silu_.default: ((r(4, 5),), {}),
    aten.gelu.default: ((r(4, 5),), {"approximate": "tanh"}),
    aten.hardswish.default: ((r(4, 5) * 4,), {}),
    aten.hardsigmoid.default: ((r(4, 5) * 4,), {}),
    aten.add.Tensor: ((r(4, 5), r(5)), {"alpha": 2}),
    aten.mul.Tensor: ((r(4, 5), 3.0), {}),
    aten.cat.default: (([r(2, 3), r(2, 4)], 1), {}),
    aten.mean.dim: ((r(2, 3, 4, 4), [2, 3], True), {}),
    aten.flatten.using_ints: ((r(2, 3, 4), 1), {}),
    aten.reshape.default: ((r(2, 3, 4), [6, -1]), {}),
    aten.permute.default: ((r(2, 3, 4), [2, 0, 1]), {}),
    aten.transpose.int: ((r(2, 3, 4), 1, 2), {}),
    aten.dropout.default: ((r(4, 5), 0.5, False), {}),
    aten.max_pool1d.default: ((r(2, 3, 9), [3], [2], [1]), {}),
    aten.max_pool2d.default: ((r(2, 3, 9, 9), [3, 3], [2, 2], [1, 1], [1, 1], True), {}),
    aten.avg_pool1d.default: ((r(2, 3, 9), [3], [2]), {}),
    aten.avg_pool2d.default: ((r(2, 3, 9, 9), [3, 3], [2, 2], [1, 1], True, False), {}),
    aten.adaptive_avg_pool1d.default: ((r(2, 3, 9), [1]), {}),
    aten.adaptive_avg_pool2d.default: ((r(2, 3, 9, 9), [2, 2]), {}),
}


def test_every_mapped_overload_has_a_call() -> None:
    assert set(CALLS) == set(BINDINGS)


@pytest.mark.parametrize("overload", list(CALLS), ids=str)
def test_binding_computes_what_the_overload_computes(overload: Any) -> None:
    args, kwargs = CALLS[overload]
    clone = lambda a: a.clone() if isinstance(a, torch.Tensor) else a  # noqa: E731  in-place ops mutate
    expected = overload(*[clone(a) for a in args], **kwargs)
    got = BINDINGS[overload](*[clone(a) for a in args], **kwargs)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got, expected)


def test_folded_module_calls_bindings_and_matches_the_original() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    model[1].running_mean.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)
    folded = fold(model, (x,)).module
    assert "torch.ops.aten" not in folded.code
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_a_first_argument_passed_by_keyword_keeps_the_overload() -> None:
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(aten.relu.default, (), {"self": x}))
    assert unboxed_calls(graph) == 0
    gm = fx.GraphModule(nn.Module(), graph)
    assert torch.equal(gm(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))
