"""Backward folds: the affine moves into the layer(s) that consume its output.

``Q(s·x + t)`` for a conv or linear Q equals ``Q'(x)`` with ``W'[o,i,k] = W[o,i,k]·s[i]`` and
``b'[o] = b[o] + Σ_{i,k} W[o,i,k]·t[i]`` — but only when every output position of Q sees the whole kernel
over real input. Zero padding breaks that (the padded border would read 0 instead of t), so a conv with
zero padding does not qualify; reflect, replicate and circular padding copy real values, commute with a
per-channel affine, and do qualify. A transposed conv spreads a constant unevenly over its output, so it
never qualifies. Every consumer of the output must qualify, or nothing is folded.
"""

from __future__ import annotations

from torch import fx

from bnfold.fold import maths
from bnfold.fold.fx_graph import FxAffine, FxGraph
from bnfold.fold.graph import (
    Layer,
    arguments,
    as_layer,
    aten,
    display,
    is_permute,
    map_axis_forward,
    readers,
)
from bnfold.fold.reasons import reason
from bnfold.fold.rules.graph import Match, Plan
from bnfold.fold.sites import AffineSite

COPYING_PADS = {"reflect", "replicate", "circular"}


def _zero_padded(layer: Layer) -> bool:
    padding = layer.padding
    if isinstance(padding, str):
        return padding == "same" and any(k > 1 for k in layer.weight_shape[2:])
    values = list(padding) if isinstance(padding, (list, tuple)) else [padding]
    return any(int(p) != 0 for p in values)


def _consumer(user: fx.Node, node: fx.Node, axis: int) -> Layer | str:
    layer = as_layer(user)
    if layer is None:
        return reason("not_a_layer", node=display(user))
    if user.args[0] is not node:
        return f"its output is a weight of {layer.name}, not its input"
    if layer.kind == "conv_transpose":
        return reason("transposed_consumer", layer=layer.name)
    if layer.input_channel_axis() != axis:
        return f"it normalises axis {axis} of {layer.name}'s input, not the channels {layer.name} reads"
    if _zero_padded(layer):
        return reason("zero_padding", layer=layer.name, padding=f"padding={layer.padding}")
    return layer


def consumers(node: fx.Node, axis: int = 1) -> list[Layer] | str:
    """Every layer reached from ``node`` through permutes and copying pads, or why one is not foldable."""
    if not readers(node):
        return reason("model_output")
    found: list[Layer] = []
    result: Layer | list[Layer] | str
    for user in readers(node):
        if user.op == "output":
            return reason("model_output")
        if is_permute(user):
            mapped = map_axis_forward(user, axis)
            result = consumers(user, mapped) if mapped is not None else f"unknown shape at {display(user)}"
        elif user.op == "call_function" and user.target == aten.pad.default:
            result = _through_pad(user, axis)
        else:
            result = _consumer(user, node, axis)
        if isinstance(result, str):
            return result
        found.extend(result if isinstance(result, list) else [result])
    return found


def _through_pad(pad: fx.Node, axis: int) -> list[Layer] | str:
    args = arguments(pad)
    mode = args.get("mode") or "constant"
    padded_dims = len(args["pad"]) // 2
    rank = len(pad.meta["val"].shape) if "val" in pad.meta else None
    if mode not in COPYING_PADS:
        return reason("pad_values", pad=display(pad), mode=mode)
    if rank is None or axis >= rank - padded_dims:
        return reason("pad_channels", pad=display(pad))
    return consumers(pad, axis)


def match_consumers(site: AffineSite, fxg: FxGraph) -> Match:
    found = consumers(site.output)
    if isinstance(found, str):
        return found
    layers = found

    writer = fxg.writer

    def rewrite() -> None:
        for layer in layers:
            weight = writer.gm_tensor(layer.weight)
            bias = writer.gm_tensor(layer.bias) if layer.bias is not None else None
            scale, shift = site.scale, site.shift
            assert scale is not None and shift is not None  # a matched site has both
            w, b = maths.fold_into_consumer(weight, bias, scale, shift, layer.groups)
            writer.replace(layer.node, "weight", layer.weight, w)
            writer.replace(layer.node, "bias", layer.bias, b)
        fxg.bypass(FxAffine(site))

    return Plan("backward", [layer.name for layer in layers], rewrite)
