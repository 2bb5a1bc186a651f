"""Forward folds: the affine moves into the layer(s) that produce its input.

Patterns, each exact:

* ``bn(P(x))``, P a conv / transposed conv / linear, possibly through permutes that carry BN's channel
  axis onto P's output-channel axis (channels-last ``linear → transpose → BatchNorm1d``):
  ``W'[c] = W[c]·s[c]``, ``b'[c] = b[c]·s[c] + t[c]``.
* ``bn(P₁(x) + P₂(y) + …)`` (ACNet-style branches): every Pᵢ is scaled by s, the shift goes into P₁.
* ``bn(cat([P₁, P₂, …], dim=1))`` (MixNet-style): each channel slice of (s, t) folds into its producer;
  concatenated along another axis, every Pᵢ holds all the channels and takes the whole (s, t).
* ``P(x) + bn(x)`` (RepVGG identity branch): with stride 1, a centred odd kernel, "same" padding and
  C_in = C_out, the identity becomes a one-hot kernel added to P.

A producer qualifies only when its output feeds nothing but this path; a weight that another call also
reads is copied for this call (a module called twice keeps its original weights on the other call).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import fx

from bnfold.fold import maths
from bnfold.fold.graph import (
    Layer,
    ParameterWriter,
    arguments,
    as_layer,
    aten,
    display,
    is_permute,
    map_axis_back,
    ndim,
    readers,
    shape,
)
from bnfold.fold.reasons import reason
from bnfold.fold.sites import AffineSite


@dataclass
class Plan:
    """A matched fold: what it folds into, and the rewrite that does it."""

    how: str
    into: list[str]
    rewrite: Callable[[ParameterWriter], None]


Match = Plan | str | None  # a plan, the reason it does not fold, or None when the pattern does not apply


def also_feeds(node: fx.Node, expected: fx.Node) -> str | None:
    """Why ``node``'s value cannot change for ``expected`` alone: the other nodes that read it, or None."""
    extra = [display(u) if u.op != "output" else "the model output" for u in readers(node) if u is not expected]
    return reason("shared", node=display(node), others=", ".join(extra)) if extra else None


def trace_to_layer(node: fx.Node, reader: fx.Node, axis: int = 1, what: str = "its input") -> Layer | str:
    """The layer whose output reaches ``reader`` through ``node`` and permutes only, with axis mapping.
    ``what`` names ``node`` in the reason when there is none."""
    path = [(node, reader)]
    while is_permute(node):
        mapped = map_axis_back(node, axis)
        if mapped is None:
            return f"the shape through {display(node)} is unknown"
        node, axis = node.args[0], mapped  # type: ignore[assignment]
        path.append((node, path[-1][0]))
    layer = as_layer(node)
    if layer is None:
        return reason("no_weights", what=what, source=display(node))
    shared = next((why for why in (also_feeds(n, r) for n, r in path) if why), None)
    if shared is not None:
        return shared
    if layer.output_channel_axis() != axis % (ndim(node) or axis + 1):
        return f"it normalises axis {axis} of {layer.name}'s output, not its output channels"
    return layer


def fold_scale_into(layer: Layer, scale: torch.Tensor, shift: torch.Tensor, writer: ParameterWriter) -> None:
    """Write s·P + t into the producer P's weight and bias."""
    weight = writer.gm_tensor(layer.weight)
    bias = writer.gm_tensor(layer.bias) if layer.bias is not None else None
    if layer.kind == "conv_transpose":
        w, b = maths.fold_into_transposed_producer(weight, bias, scale, shift, layer.groups)
    else:
        w, b = maths.fold_into_producer(weight, bias, scale, shift)
    writer.replace(layer.node, "weight", layer.weight, w)
    writer.replace(layer.node, "bias", layer.bias, b)


def _bypass(site: AffineSite, graph: fx.Graph) -> None:
    site.output.replace_all_uses_with(site.input)
    site.erase(graph)


def match_producer(site: AffineSite, graph: fx.Graph) -> Match:
    found = trace_to_layer(site.input, site.nodes[-1])
    if isinstance(found, str):
        return found
    layer = found

    def rewrite(writer: ParameterWriter) -> None:
        fold_scale_into(layer, site.scale, site.shift, writer)  # type: ignore[arg-type]
        _bypass(site, graph)

    return Plan("forward", [layer.name], rewrite)


def _is_plain_add(node: fx.Node) -> bool:
    return bool(
        node.op == "call_function"
        and node.target == aten.add.Tensor
        and node.kwargs.get("alpha", 1) == 1
        and len(_node_args(node)) == 2
    )


def _node_args(node: fx.Node, stop: int = 2) -> list[fx.Node]:
    """The first ``stop`` positional arguments of ``node`` that are nodes."""
    return [a for a in node.args[:stop] if isinstance(a, fx.Node)]


def _sum_leaves(node: fx.Node, reader: fx.Node) -> list[tuple[fx.Node, fx.Node]] | str:
    """The summands of a tree of single-use adds, each with the node that reads it."""
    shared = also_feeds(node, reader)
    if shared is not None:
        return shared
    leaves: list[tuple[fx.Node, fx.Node]] = []
    for operand in _node_args(node):
        if shape(operand) != shape(node):
            return f"{display(node)} broadcasts {display(operand)}"
        if _is_plain_add(operand):
            found = _sum_leaves(operand, node)
            if isinstance(found, str):
                return found
            leaves.extend(found)
        else:
            leaves.append((operand, node))
    return leaves


def match_branches(site: AffineSite, graph: fx.Graph) -> Match:
    if not _is_plain_add(site.input):
        return None
    leaves = _sum_leaves(site.input, site.nodes[-1])
    if isinstance(leaves, str):
        return leaves
    what = f"a summand of {display(site.input)}"
    layers = [trace_to_layer(leaf, reader, what=what) for leaf, reader in leaves]
    failed = next((r for r in layers if isinstance(r, str)), None)
    if failed is not None:
        return failed
    if len({id(layer.node) for layer in layers}) != len(layers):  # type: ignore[union-attr]
        return f"{display(site.input)} adds the same layer output twice"

    def rewrite(writer: ParameterWriter) -> None:
        zero = torch.zeros_like(site.shift)  # type: ignore[arg-type]
        for index, layer in enumerate(layers):
            fold_scale_into(layer, site.scale, site.shift if index == 0 else zero, writer)  # type: ignore[arg-type]
        _bypass(site, graph)

    return Plan("branches", [layer.name for layer in layers], rewrite)  # type: ignore[union-attr]


def match_concat(site: AffineSite, graph: fx.Graph) -> Match:
    cat = site.input
    if not (cat.op == "call_function" and cat.target == aten.cat.default):
        return None
    dims = ndim(cat)
    if dims is None:
        return f"the rank of {display(cat)} is unknown"
    along_channels = int(arguments(cat)["dim"]) % dims == 1
    shared = also_feeds(cat, site.nodes[-1])
    if shared is not None:
        return shared
    pieces: list[fx.Node] = list(cat.args[0])  # type: ignore[arg-type]
    widths = [(shape(p) or (None, None))[1] for p in pieces]
    if not along_channels:  # every piece holds all the channels: each takes the whole affine
        widths = [None] * len(pieces) if any(w != site.scale.numel() for w in widths) else widths  # type: ignore[union-attr]
    if not all(isinstance(w, int) for w in widths) or len(set(pieces)) != len(pieces):
        return f"the channel slices of {display(cat)} are not known or not distinct"
    layers = [trace_to_layer(piece, cat, what=f"slice {i} of {display(cat)}") for i, piece in enumerate(pieces)]
    failed = next((r for r in layers if isinstance(r, str)), None)
    if failed is not None:
        return failed

    def rewrite(writer: ParameterWriter) -> None:
        start = 0
        for layer, width in zip(layers, widths, strict=True):
            part = slice(start, start + width) if along_channels else slice(None)
            fold_scale_into(layer, site.scale[part], site.shift[part], writer)  # type: ignore[arg-type,index]
            start += width
        _bypass(site, graph)

    return Plan("concat", [layer.name for layer in layers], rewrite)  # type: ignore[union-attr]


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


def match_identity(site: AffineSite, graph: fx.Graph) -> Match:
    users = readers(site.output)
    if len(users) != 1 or not _is_plain_add(users[0]):
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
            return Plan("identity", [layer.name], _absorb(site, layer, add, rest, graph))  # type: ignore[arg-type]
        reasons.append(problem)
    return reason("identity", problems="; ".join(reasons))


def _flat_sum(node: fx.Node) -> list[fx.Node]:
    if not _is_plain_add(node) or len(readers(node)) != 1:
        return [node]
    return [leaf for operand in _node_args(node) for leaf in _flat_sum(operand)]


def _absorb(
    site: AffineSite, layer: Layer, add: fx.Node, rest: fx.Node, graph: fx.Graph
) -> Callable[[ParameterWriter], None]:
    def rewrite(writer: ParameterWriter) -> None:
        weight = writer.gm_tensor(layer.weight)
        bias = writer.gm_tensor(layer.bias) if layer.bias is not None else None
        w, b = maths.absorb_identity(weight, bias, site.scale, site.shift, layer.groups)  # type: ignore[arg-type]
        writer.replace(layer.node, "weight", layer.weight, w)
        writer.replace(layer.node, "bias", layer.bias, b)
        add.replace_all_uses_with(rest)
        graph.erase_node(add)
        site.erase(graph)

    return rewrite
