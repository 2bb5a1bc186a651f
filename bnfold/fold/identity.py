"""Identity-branch folds: ``P(x) + bn(x)`` (RepVGG) with stride 1, a centred odd kernel, "same" padding
and C_in = C_out: the identity becomes a one-hot kernel added to P (:func:`bnfold.fold.maths.absorb_identity`).

A layer qualifies only when its output feeds nothing but the sum.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import fx

from bnfold.fold import maths
from bnfold.fold.fx_graph import FxGraph, is_plain_add
from bnfold.fold.graph import Layer, ParameterWriter, as_layer, readers, shape
from bnfold.fold.reasons import reason
from bnfold.fold.rules.graph import Match, Plan
from bnfold.fold.sites import AffineSite


def _same_padding(layer: Layer, dilation: list[int]) -> bool:
    kernel = list(layer.weight_shape[2:])
    if any(k % 2 == 0 for k in kernel):
        return False
    if layer.padding == "same":
        return True
    given = layer.padding
    padding = list(given) if isinstance(given, (list, tuple)) else [given] * len(kernel)
    padding = padding * len(kernel) if len(padding) == 1 else padding
    return padding == [d * (k - 1) // 2 for d, k in zip(dilation, kernel, strict=True)]


def identity_conv_problem(layer: Layer, x: fx.Node, channels: int) -> str | None:
    """Why ``layer`` cannot absorb an identity branch on ``x``, or None when it can."""
    if layer.kind != "conv":
        return f"{layer.name} is not a convolution"
    if layer.node.args[0] is not x:
        return f"{layer.name} does not read the same input"
    stride = list(layer.stride) if isinstance(layer.stride, (list, tuple)) else [layer.stride]
    if any(int(s) != 1 for s in stride):
        return f"{layer.name} has stride {stride}"
    if layer.weight_shape[0] != channels or layer.weight_shape[1] * layer.groups != channels:
        return f"{layer.name} does not map {channels} channels to {channels}"
    if not _same_padding(layer, layer.dilation):
        return f"{layer.name} is not a centred odd kernel with 'same' padding"
    if shape(layer.node) != shape(x):
        return f"{layer.name} changes the shape"
    return None


def match_identity(site: AffineSite, fxg: FxGraph) -> Match:
    users = readers(site.output)
    if len(users) != 1 or not is_plain_add(users[0]):
        return None
    add = users[0]
    rest = add.args[1] if add.args[0] is site.output else add.args[0]
    layers = [
        layer
        for layer in map(as_layer, _flat_sum(rest))  # type: ignore[arg-type]
        if layer is not None and layer.node.args[0] is site.input and len(readers(layer.node)) == 1
    ]
    if not layers:
        return None  # no conv beside it reads the same input: not a RepVGG identity branch
    channels = site.scale.numel()  # type: ignore[union-attr]
    reasons = []
    for layer in layers:
        problem = identity_conv_problem(layer, site.input, channels)
        if problem is None:
            return Plan("identity", [layer.name], _absorb(site, layer, add, rest, fxg))  # type: ignore[arg-type]
        reasons.append(problem)
    return reason("identity", problems="; ".join(reasons))


def _flat_sum(node: fx.Node) -> list[fx.Node]:
    if not is_plain_add(node) or len(readers(node)) != 1:
        return [node]
    return [leaf for operand in node.args[:2] if isinstance(operand, fx.Node) for leaf in _flat_sum(operand)]


def _absorb(site: AffineSite, layer: Layer, add: fx.Node, rest: fx.Node, fxg: FxGraph) -> Callable[[], None]:
    writer: ParameterWriter = fxg.writer
    graph = fxg.graph

    def rewrite() -> None:
        weight = writer.gm_tensor(layer.weight)
        bias = writer.gm_tensor(layer.bias) if layer.bias is not None else None
        w, b = maths.absorb_identity(weight, bias, site.scale, site.shift, layer.groups)  # type: ignore[arg-type]
        writer.replace(layer.node, "weight", layer.weight, w)
        writer.replace(layer.node, "bias", layer.bias, b)
        add.replace_all_uses_with(rest)
        graph.erase_node(add)
        site.erase(graph)

    return rewrite
