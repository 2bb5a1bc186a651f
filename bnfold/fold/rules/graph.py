"""The graph interface the fold rules are written against, and what a rule returns.

A rule sees a graph as values (``V``) computed by nodes (``N``): who produces a value, who reads it (a
*use* is a reading node and the input slot it reads through), what kind of node a node is — a layer with
weights, or one of the pass-through ops an affine can be moved across (``add``, ``concat``, ``move``) —
and how to write a parameter back. A ``move`` moves or copies values without combining them, each value
staying in its channel: permutes and transposes, slices along other axes, reshapes that keep the channel
axis whole, unsqueeze and squeeze, nearest-neighbour resizing; a per-channel affine commutes with it, along
the axis it maps the channels to. Each graph representation implements it in an adapter: torch FX
(:class:`bnfold.fold.fx_graph.FxGraph`) and ONNX (:class:`bnfold.fold.onnx.adapter.OnnxGraph`).

Tensors cross the interface in float64 and in a canonical layout (a layer's weight has its output
channels on axis 0, a transposed conv's on axis 1 by groups); the adapter casts a written value back to
the dtype and layout of the parameter it replaces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import torch

N = TypeVar("N")
V = TypeVar("V")
N_co = TypeVar("N_co", covariant=True)
V_co = TypeVar("V_co", covariant=True)

PassThrough = Literal["add", "concat", "move"]
LayerKind = Literal["conv", "conv_transpose", "linear"]
Pads = list[int] | Literal["same", "valid"]
"""A conv's zero padding: amounts per spatial axis (all the starts, then all the ends), or as computed."""


class FoldLayer(Protocol):
    """A conv, transposed conv or linear layer whose weights a fold may rewrite."""

    @property
    def kind(self) -> LayerKind: ...

    @property
    def name(self) -> str:
        """The layer as a record names it: its module path."""
        ...

    @property
    def groups(self) -> int: ...

    @property
    def channels(self) -> int:
        """Its output channels."""
        ...

    @property
    def channel_axis(self) -> int | None:
        """The axis of its output that holds the channels (None when the rank is unknown)."""
        ...

    @property
    def channels_last(self) -> bool:
        """Whether the channels are on the last axis of its output (a linear layer)."""
        ...

    @property
    def input_channel_axis(self) -> int | None:
        """The axis of its data input whose channels it reads (None when unknown or when it reads none)."""
        ...

    @property
    def weight_scale(self) -> float:
        """What the layer multiplies its input-weight product by (a Gemm's α; 1 for every other layer)."""
        ...

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The shape of the weight in the layout :meth:`weight` gives it."""
        ...

    @property
    def strides(self) -> list[int]:
        """A conv's strides per spatial axis (``[]`` for a linear layer)."""
        ...

    @property
    def dilations(self) -> list[int]:
        """A conv's dilations per spatial axis."""
        ...

    @property
    def pads(self) -> Pads:
        """A conv's zero padding."""
        ...

    @property
    def padding_text(self) -> str:
        """The padding as the model states it, for a reason (``padding=[1, 1]``, ``auto_pad=SAME_UPPER``)."""
        ...

    def weight(self) -> torch.Tensor:
        """The weight, float64: [C_out, C_in/groups, k...] (conv, linear) or [C_in, C_out/groups, k...]."""
        ...

    def bias(self) -> torch.Tensor | None:
        """The bias as the layer adds it, float64, or None when it has none."""
        ...

    def write(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Give the layer this weight and (unless None) this bias, both float64 in the layout above."""
        ...


@dataclass(frozen=True)
class PadView:
    """A pad node: its mode as written, whether it copies values (reflect, replicate, circular) rather than
    writing a constant, and the axes it pads by a non-zero amount (None when not known)."""

    mode: str
    copies: bool
    padded_axes: list[int] | None


class FoldGraph(Protocol[N, V]):
    """What a fold rule reads from and writes to a graph."""

    def producer(self, value: V) -> N | None:
        """The node that computes ``value``; None for a model input or a stored constant."""
        ...

    def output(self, node: N) -> V:
        """The (first) value ``node`` computes."""
        ...

    def inputs(self, node: N) -> list[V]:
        """The values a pass-through node reads, by slot (a concat's pieces in order)."""
        ...

    def pass_through(self, node: N) -> PassThrough | None:
        """Which pass-through op ``node`` is, if it is one a per-channel affine can be moved across."""
        ...

    def layer_kind(self, node: N) -> LayerKind | None:
        """Whether ``node`` is a conv, transposed conv or linear layer with weights a fold could rewrite."""
        ...

    def layer(self, node: N) -> FoldLayer | str:
        """The layer ``node`` is, or why its weights cannot be rewritten (``layer_kind`` is not None)."""
        ...

    def layer_input(self, node: N) -> V:
        """The data input of a layer."""
        ...

    def readers(self, value: V) -> list[tuple[N, int]]:
        """The nodes that read ``value``, each with the input slot it reads it through."""
        ...

    def is_output(self, value: V) -> bool:
        """Whether ``value`` is a model output."""
        ...

    def rank(self, value: V) -> int | None: ...

    def constant(self, value: V) -> torch.Tensor | None:
        """The value of a stored constant, float64, or None for anything computed or fed at run time."""
        ...

    def concat_axis(self, node: N) -> int:
        """The axis a concat joins along, as written (possibly negative)."""
        ...

    def source_axis(self, node: N, axis: int) -> int | str:
        """For a move: the axis of its input whose values it moves, each within its channel, to ``axis`` of its
        output; or why it does not keep that axis whole (it slices it, merges it with another, ...)."""
        ...

    def target_axis(self, node: N, axis: int) -> int | str:
        """For a move: the axis of its output ``axis`` of its input goes to, or why it does not keep it whole."""
        ...

    def pad(self, node: N) -> PadView | None:
        """``node`` as a pad, or None when it is not one."""
        ...

    def exclusive(self, value: V, use: tuple[N, int]) -> str | None:
        """Why ``value`` is read by more than ``use`` (a node and its input slot), or None when it is not."""
        ...

    def no_weights(self, value: V, what: str) -> str:
        """The reason that ``value`` (``what`` a rule followed) comes from nothing with weights."""
        ...

    def label(self, node: N) -> str:
        """How a reason names ``node``."""
        ...

    def name(self, node: N) -> str:
        """How a record names ``node``: the module path it comes from."""
        ...

    def write_param(self, node: N, slot: int, value: torch.Tensor) -> None:
        """Make input ``slot`` of ``node`` the constant ``value`` (float64, cast back to the old one's dtype)."""
        ...

    def bypass(self, affine: Affine[N, V]) -> None:
        """Remove ``affine``'s nodes; the node computing its input now computes its output (a forward fold)."""
        ...

    def reroute(self, affine: Affine[N, V]) -> None:
        """Remove ``affine``'s nodes; what read its output reads its input (a backward fold: the readers now
        compute the same from it)."""
        ...

    def bypass_node(self, node: N, value: V) -> None:
        """Remove ``node``; what read its output reads ``value`` (which now computes the same)."""
        ...

    def remove(self, affine: Affine[N, V]) -> None:
        """Remove ``affine``'s nodes, whose output nothing reads any more."""
        ...

    def freeze(self, affine: Affine[N, V], form: str) -> str | None:
        """Keep ``affine`` as a frozen ``x·s + t`` in ``form`` ("batchnorm": an inference BatchNorm with mean 0,
        variance 1, epsilon 0; "muladd": a Mul and an Add); returns why it cannot, or None. An affine that
        already is a constant Mul/Add stays as it is."""
        ...


class Affine(Protocol[N_co, V_co]):
    """A per-channel ``output = scale·input + shift`` along ``axis`` of its input, as a rule sees it."""

    @property
    def input(self) -> V_co: ...

    @property
    def output(self) -> V_co: ...

    @property
    def use(self) -> tuple[N_co, int]:
        """The node and slot through which the affine reads its input."""
        ...

    @property
    def axis(self) -> int: ...

    @property
    def scale(self) -> torch.Tensor: ...

    @property
    def shift(self) -> torch.Tensor: ...


Rewrite = Callable[[], None]


@dataclass
class Plan:
    """A checked fold: how it folds, the layers it folds into, and the rewrite that does it."""

    how: str
    into: list[str]
    rewrite: Rewrite


Match = Plan | str | None
"""What a rule's ``match`` returns: a plan, the reason it refuses, or None when its pattern does not apply."""
