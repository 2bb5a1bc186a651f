"""Faster eager calls in the folded GraphModule: aten operator overloads become their Python bindings.

``torch.ops.aten.conv2d.default(x, w, b)`` runs through the boxed operator path (the arguments packed on a
stack and matched against the schema on every call); ``torch.conv2d(x, w, b)`` calls the same aten operator
unboxed. On a small model that difference is most of the gap to a hand-written module (the shipped digits
CNN's numbers are in ``benchmarks/PROFILE.md``).

Only the overloads below are mapped: each binding calls the same aten operator with the same arguments in
the same order, and with arguments of that overload's types its overload resolution lands on that
overload. A node passing its first argument by keyword (the two name it differently) keeps its overload.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx

aten = torch.ops.aten
_nn: Any = torch._C._nn

BINDINGS: dict[Any, Callable[..., Any]] = {
    aten.conv1d.default: torch.conv1d,
    aten.conv2d.default: torch.conv2d,
    aten.conv3d.default: torch.conv3d,
    aten.conv_transpose1d.default: torch.conv_transpose1d,
    aten.conv_transpose2d.input: torch.conv_transpose2d,
    aten.conv_transpose3d.input: torch.conv_transpose3d,
    aten.linear.default: _nn.linear,
    aten.addmm.default: torch.addmm,
    aten.matmul.default: torch.matmul,
    aten.batch_norm.default: torch.batch_norm,
    aten.relu.default: torch.relu,
    aten.relu_.default: torch.relu_,
    aten.hardtanh.default: _nn.hardtanh,
    aten.hardtanh_.default: _nn.hardtanh_,
    aten.leaky_relu.default: _nn.leaky_relu,
    aten.sigmoid.default: torch.sigmoid,
    aten.tanh.default: torch.tanh,
    aten.silu.default: _nn.silu,
    aten.silu_.default: _nn.silu_,
    aten.gelu.default: _nn.gelu,
    aten.hardswish.default: _nn.hardswish,
    aten.hardsigmoid.default: _nn.hardsigmoid,
    aten.add.Tensor: torch.add,
    aten.mul.Tensor: torch.mul,
    aten.cat.default: torch.cat,
    aten.mean.dim: torch.mean,
    aten.flatten.using_ints: torch.flatten,
    aten.reshape.default: torch.reshape,
    aten.permute.default: torch.permute,
    aten.transpose.int: torch.transpose,
    aten.dropout.default: torch.dropout,
    aten.max_pool1d.default: torch.max_pool1d,
    aten.max_pool2d.default: torch.max_pool2d,
    aten.avg_pool1d.default: torch.avg_pool1d,
    aten.avg_pool2d.default: _nn.avg_pool2d,
    aten.adaptive_avg_pool1d.default: torch.adaptive_avg_pool1d,
    aten.adaptive_avg_pool2d.default: _nn.adaptive_avg_pool2d,
}


def unboxed_calls(graph: fx.Graph) -> int:
    """Call the bindings instead of the overloads in ``graph`` (in place; recompile its module after).
    Returns how many calls changed."""
    count = 0
    for node in graph.nodes:
        binding = BINDINGS.get(node.target) if node.op == "call_function" else None
        if binding is None:
            continue
        first = node.target._schema.arguments[0].name
        if first not in node.kwargs:
            node.target = binding
            count += 1
    return count


OVERLOADS: dict[Callable[..., Any], Any] = {binding: overload for overload, binding in BINDINGS.items()}


def overload_of(target: Any) -> Any:
    """The aten overload a call target stands for: a binding's overload, anything else as it is."""
    return OVERLOADS.get(target, target) if callable(target) else target
