"""The fold rules' graph interface (:class:`bnfold.fold.rules.graph.FoldGraph`) over torch.export's aten
graph: a value is the ``fx.Node`` that computes it, a constant is a ``get_attr`` tensor, layers are the conv,
transposed conv and linear calls of :func:`bnfold.fold.graph.as_layer`, and parameters are written through
a :class:`~bnfold.fold.graph.ParameterWriter` (which gives a call its own copy of a weight another call
still reads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import fx

from bnfold.fold.graph import (
    Layer,
    ParameterWriter,
    arguments,
    as_layer,
    aten,
    constant,
    display,
    ndim,
    readers,
)
from bnfold.fold.moves import is_move, source_axis, target_axis
from bnfold.fold.reasons import reason
from bnfold.fold.rules.graph import Affine, LayerKind, Pads, PadView, PassThrough
from bnfold.fold.sites import AffineSite

F64 = torch.float64
COPYING_PADS = ("reflect", "replicate", "circular")


@dataclass
class FxLayer:
    """A conv, transposed conv or linear call, its weights read and written through ``writer``."""

    layer: Layer
    writer: ParameterWriter

    @property
    def kind(self) -> LayerKind:
        return cast(LayerKind, self.layer.kind)

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def groups(self) -> int:
        return self.layer.groups

    @property
    def channels(self) -> int:
        shape = self.layer.weight_shape
        return shape[1] * self.groups if self.kind == "conv_transpose" else shape[0]

    @property
    def channel_axis(self) -> int | None:
        return self.layer.output_channel_axis()

    @property
    def channels_last(self) -> bool:
        return self.kind == "linear"

    @property
    def input_channel_axis(self) -> int | None:
        return self.layer.input_channel_axis()

    @property
    def weight_scale(self) -> float:
        return 1.0

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return self.layer.weight_shape

    @property
    def strides(self) -> list[int]:
        stride = self.layer.stride
        return [int(s) for s in stride] if isinstance(stride, (list, tuple)) else [int(stride)]

    @property
    def dilations(self) -> list[int]:
        return self.layer.dilation

    @property
    def pads(self) -> Pads:
        padding = self.layer.padding
        if padding in ("same", "valid"):
            return cast(Pads, padding)
        spatial = len(self.weight_shape) - 2
        amounts = [int(p) for p in padding] if isinstance(padding, (list, tuple)) else [int(padding)]
        amounts = amounts * spatial if len(amounts) == 1 else amounts
        return amounts + amounts

    @property
    def padding_text(self) -> str:
        return f"padding={self.layer.padding}"

    def _tensor(self, node: fx.Node) -> torch.Tensor:
        return self.writer.gm_tensor(node)

    def weight(self) -> torch.Tensor:
        return self._tensor(self.layer.weight).detach().to(F64)

    def bias(self) -> torch.Tensor | None:
        bias = self.layer.bias
        return None if bias is None else self._tensor(bias).detach().to(F64)

    def write(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        dtype = self._tensor(self.layer.weight).dtype
        node = self.layer.node  # a float64 value cast to another dtype is a tensor of its own: not copied again
        self.writer.replace(node, "weight", self.layer.weight, weight.to(dtype), owned=weight.dtype != dtype)
        if bias is not None:
            self.writer.replace(node, "bias", self.layer.bias, bias.to(dtype), owned=bias.dtype != dtype)


@dataclass
class FxAffine:
    """An :class:`~bnfold.fold.sites.AffineSite` as the rules see it (along axis 1 of its input)."""

    site: AffineSite
    axis: int = 1

    @property
    def input(self) -> fx.Node:
        return self.site.input

    @property
    def output(self) -> fx.Node:
        return self.site.output

    @property
    def use(self) -> tuple[fx.Node, int]:
        first = self.site.first
        return first, list(first.args).index(self.site.input)

    @property
    def scale(self) -> torch.Tensor:
        return cast(torch.Tensor, self.site.scale)

    @property
    def shift(self) -> torch.Tensor:
        return cast(torch.Tensor, self.site.shift)


def _read(node: fx.Node) -> list[fx.Node]:
    """The nodes ``node`` reads, in argument order, once per argument that names them."""
    read: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), read.append)
    return read


def _node_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.args[:2] if isinstance(a, fx.Node)]


def is_plain_add(node: fx.Node) -> bool:
    """``a + b`` of two computed or stored tensors, without ``alpha``."""
    return bool(
        node.op == "call_function"
        and node.target == aten.add.Tensor
        and node.kwargs.get("alpha", 1) == 1
        and len(_node_args(node)) == 2
    )


class FxGraph:
    """A GraphModule's graph seen through the fold rules' interface."""

    def __init__(self, gm: fx.GraphModule, writer: ParameterWriter | None = None) -> None:
        self.gm = gm
        self.graph = gm.graph
        self.writer = writer or ParameterWriter(gm)

    def producer(self, value: fx.Node) -> fx.Node | None:
        return value if value.op == "call_function" else None

    def output(self, node: fx.Node) -> fx.Node:
        return node

    def inputs(self, node: fx.Node) -> list[fx.Node]:
        if node.target == aten.cat.default:
            return list(cast(list[fx.Node], node.args[0]))
        return _node_args(node) if is_plain_add(node) else [cast(fx.Node, node.args[0])]

    def pass_through(self, node: fx.Node) -> PassThrough | None:
        if is_plain_add(node):
            return "add"
        if node.op == "call_function" and node.target == aten.cat.default:
            return "concat"
        return "move" if is_move(node) else None

    def layer_kind(self, node: fx.Node) -> LayerKind | None:
        layer = as_layer(node)
        return None if layer is None else cast(LayerKind, layer.kind)

    def layer_input(self, node: fx.Node) -> fx.Node:
        return cast(fx.Node, node.args[0])

    def readers(self, value: fx.Node) -> list[tuple[fx.Node, int]]:
        found = []
        for user in readers(value):
            if user.op != "output":
                found += [(user, slot) for slot, read in enumerate(_read(user)) if read is value]
        return found

    def is_output(self, value: fx.Node) -> bool:
        return any(user.op == "output" for user in value.users)

    def layer(self, node: fx.Node) -> FxLayer | str:
        layer = as_layer(node)
        return f"{display(node)} is not a layer" if layer is None else FxLayer(layer, self.writer)

    def rank(self, value: fx.Node) -> int | None:
        return ndim(value)

    def constant(self, value: fx.Node) -> torch.Tensor | None:
        found = constant(self.gm, value)
        return None if found is None else found.detach().to(F64)

    def concat_axis(self, node: fx.Node) -> int:
        return int(arguments(node)["dim"])

    def source_axis(self, node: fx.Node, axis: int) -> int | str:
        return source_axis(node, axis)

    def target_axis(self, node: fx.Node, axis: int) -> int | str:
        return target_axis(node, axis)

    def pad(self, node: fx.Node) -> PadView | None:
        if node.op != "call_function" or node.target != aten.pad.default:
            return None
        args = arguments(node)
        mode, amounts, rank = str(args.get("mode") or "constant"), [int(p) for p in args["pad"]], ndim(node)
        padded = None
        if rank is not None:  # (start, end) pairs from the last axis backwards
            pairs = range(len(amounts) // 2)
            padded = [rank - 1 - i for i in pairs if amounts[2 * i] or amounts[2 * i + 1]]
        return PadView(mode, mode in COPYING_PADS, padded)

    def exclusive(self, value: fx.Node, use: tuple[fx.Node, int]) -> str | None:
        reader = use[0]
        others = [display(u) if u.op != "output" else "the model output" for u in readers(value) if u is not reader]
        if not others and _read(reader).count(value) > 1:
            others = ["another input of the same node"]
        return reason("shared", node=display(value), others=", ".join(others)) if others else None

    def no_weights(self, value: fx.Node, what: str) -> str:
        return reason("no_weights", what=what, source=display(value))

    def label(self, node: fx.Node) -> str:
        return display(node)

    def name(self, node: fx.Node) -> str:
        return display(node)

    def write_param(self, node: fx.Node, slot: int, value: torch.Tensor) -> None:
        current = cast(fx.Node, node.args[slot])
        old = constant(self.gm, current)
        dtype = old.dtype if old is not None else value.dtype
        names = [a.name for a in node.target._schema.arguments]  # type: ignore[union-attr]
        self.writer.replace(node, names[slot], current, value.to(dtype))

    def bypass(self, affine: Affine[fx.Node, fx.Node]) -> None:
        site = cast(FxAffine, affine).site
        site.output.replace_all_uses_with(site.input)
        site.erase(self.graph)

    def reroute(self, affine: Affine[fx.Node, fx.Node]) -> None:
        self.bypass(affine)

    def bypass_node(self, node: fx.Node, value: fx.Node) -> None:
        node.replace_all_uses_with(value)
        self.graph.erase_node(node)

    def remove(self, affine: Affine[fx.Node, fx.Node]) -> None:
        cast(FxAffine, affine).site.erase(self.graph)

    def freeze(self, affine: Affine[fx.Node, fx.Node], form: str) -> str | None:
        site = cast(FxAffine, affine).site
        if not site.is_batchnorm_call:
            return None
        x = site.input
        dtype = x.meta["val"].dtype if "val" in x.meta else torch.float32
        scale, shift = affine.scale.to(dtype), affine.shift.to(dtype)
        if form == "batchnorm":
            frozen = _frozen_batchnorm(self.writer, site, scale, shift)
        else:
            frozen = _frozen_muladd(self.writer, site, scale, shift)
        frozen.meta["val"] = site.output.meta.get("val", x.meta.get("val"))
        frozen.meta["nn_module_stack"] = site.output.meta.get("nn_module_stack", {})
        site.output.replace_all_uses_with(frozen)
        site.erase(self.graph)
        return None


def _frozen_batchnorm(writer: ParameterWriter, site: AffineSite, scale: torch.Tensor, shift: torch.Tensor) -> fx.Node:
    """``batch_norm(x, s, t, mean=0, var=1, eps=0)``: exactly ``x·s + t``, as one inference BatchNorm."""
    args = [
        writer.new_attribute(site.output, value, name)
        for value, name in (
            (scale, "scale"),
            (shift, "shift"),
            (torch.zeros_like(scale), "mean"),
            (torch.ones_like(scale), "var"),
        )
    ]
    graph = writer.gm.graph
    with graph.inserting_before(site.output):
        return graph.call_function(aten.batch_norm.default, (site.input, *args, False, 0.0, 0.0, False))


def _frozen_muladd(writer: ParameterWriter, site: AffineSite, scale: torch.Tensor, shift: torch.Tensor) -> fx.Node:
    """``x·s + t`` as a Mul and an Add, the constants shaped to broadcast over axis 1."""
    view = [-1] + [1] * ((ndim(site.input) or 2) - 2)
    s_node = writer.new_attribute(site.output, scale.reshape(view), "scale")
    t_node = writer.new_attribute(site.output, shift.reshape(view), "shift")
    graph = writer.gm.graph
    with graph.inserting_before(site.output):
        scaled = graph.call_function(aten.mul.Tensor, (site.input, s_node))
        scaled.meta["val"] = site.input.meta.get("val")
        return graph.call_function(aten.add.Tensor, (scaled, t_node))
