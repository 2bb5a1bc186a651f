"""Finding the per-channel affines to fold: BatchNorm calls and BN-like constant Mul/Add pairs.

Each becomes an :class:`AffineSite`: the node it reads (``input``), the node whose value it defines
(``output``), the nodes to erase once it is folded, and its fp64 scale and shift along axis 1. A BN that
normalises with batch statistics gets no scale: it stays as it is, with its reason recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx

from bnfold.errors import FoldError
from bnfold.fold import maths
from bnfold.fold.graph import (
    BATCHNORMS,
    arguments,
    as_layer,
    aten,
    attribute_owner,
    constant,
    is_getitem_zero,
    is_permute,
    ndim,
    readers,
    shape,
)
from bnfold.fold.reasons import reason
from bnfold.fold.records import KEPT, BnRecord


@dataclass
class AffineSite:
    """One per-channel affine ``output = scale · input + shift`` (along ``axis``) found in the graph."""

    record: BnRecord
    first: fx.Node  # the call that reads the input: the BN, or the Mul/Add
    output: fx.Node
    nodes: list[fx.Node]
    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    statistics: tuple[str, str] | None = None  # running_mean, running_var attribute names
    is_batchnorm_call: bool = True
    axis: int = 1
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def input(self) -> fx.Node:
        """The node the affine reads; read live, since folding a neighbour rewires it."""
        args = self.first.args
        if self.is_batchnorm_call:
            return args[0]  # type: ignore[return-value]
        operand = args[0]
        return operand if isinstance(operand, fx.Node) and operand.op != "get_attr" else args[1]  # type: ignore[return-value]

    @property
    def foldable(self) -> bool:
        return self.scale is not None

    def erase(self, graph: fx.Graph) -> None:
        """Remove the site's nodes after its output's users were pointed elsewhere."""
        for node in self.nodes:
            if not node.users:
                graph.erase_node(node)


def module_kind(node: fx.Node, default: str) -> str:
    """The class name of the innermost module that made ``node`` (``BatchNorm2d``, ``FrozenBatchNorm2d``)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return default
    type_name = list(stack.values())[-1][1]
    if isinstance(type_name, str):
        return type_name.rsplit(".", 1)[-1]
    return getattr(type_name, "__name__", default)


def module_path(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    return list(stack.values())[-1][0] or None


def find_sites(gm: fx.GraphModule, check_statistics: bool = True) -> list[AffineSite]:
    """Every BatchNorm call and BN-like constant Mul/Add in graph order.

    Raises :class:`FoldError` for running statistics that define no affine (NaN, Inf, negative variance)
    unless ``check_statistics`` is False (they are about to be re-estimated).
    """
    sites: list[AffineSite] = []
    claimed: set[fx.Node] = set()
    for node in list(gm.graph.nodes):
        if node in claimed or node.op != "call_function":
            continue
        if node.target in BATCHNORMS:
            site = batchnorm_site(gm, node, check_statistics)
        else:
            site = constant_affine_site(gm, node)
        if site is not None:
            sites.append(site)
            claimed.update(site.nodes)
    _distinct_names(sites)
    return sites


def _distinct_names(sites: list[AffineSite]) -> None:
    """Two sites from one module (a BN and the scaling its subclass adds) get the node's name appended."""
    seen: set[str] = set()
    for site in sites:
        if site.record.name in seen:
            site.record.name = f"{site.record.name} ({site.first.name})"
        seen.add(site.record.name)


def batchnorm_site(gm: fx.GraphModule, node: fx.Node, check_statistics: bool = True) -> AffineSite | None:
    args = arguments(node)
    output = node
    if node.target == aten._native_batch_norm_legit_no_training.default:
        outputs = readers(node)
        if len(outputs) != 1 or not is_getitem_zero(outputs[0]):
            return _kept(node, args, "its saved mean and inverse std outputs are used elsewhere")
        output = outputs[0]
    if args.get("training"):
        no_statistics = args["running_mean"] is None
        return _kept(node, args, reason("no_running_stats" if no_statistics else "batch_stats"))
    values = {k: constant(gm, args[k]) for k in ("running_mean", "running_var", "weight", "bias")}
    for key in ("weight", "bias"):
        if args[key] is not None and values[key] is None:
            return _kept(node, args, f"its {key} is computed at run time, not a stored parameter")
    if values["running_mean"] is None or values["running_var"] is None:
        return _kept(node, args, "its running statistics are computed at run time")
    record = BnRecord(name=_bn_name(node, args), kind=module_kind(node, "batch_norm"))
    nodes = [output, node] if output is not node else [node]
    stats = (str(args["running_mean"].target), str(args["running_var"].target))
    site = AffineSite(record, node, output, nodes, statistics=stats, extra={"eps": float(args["eps"])})
    refresh_affine(gm, site, check_statistics)
    return site


def refresh_affine(gm: fx.GraphModule, site: AffineSite, check_statistics: bool = True) -> None:
    """(Re)compute a BatchNorm site's fp64 scale and shift from the tensors the graph holds now."""
    args = arguments(site.first)
    mean, var = constant(gm, args["running_mean"]), constant(gm, args["running_var"])
    eps = float(args["eps"])
    problem = maths.statistics_problem(mean, var, eps) if check_statistics else None  # type: ignore[arg-type]
    if problem:
        raise FoldError(
            f"BatchNorm {site.record.name} ({site.record.kind}): {problem}; the checkpoint is "
            "damaged: restore it, or re-estimate the statistics with --recalibrate DATA.npz"
        )
    site.scale, site.shift = maths.batchnorm_affine(
        mean, var, constant(gm, args["weight"]), constant(gm, args["bias"]), eps
    )
    site.record.channels = site.scale.numel()


def _bn_name(node: fx.Node, args: dict[str, object]) -> str:
    """The BatchNorm module's path, or for a functional call the module it sits in and the node's name."""
    for key in ("running_mean", "weight"):
        value = args.get(key)
        if isinstance(value, fx.Node) and value.op == "get_attr" and str(value.target).endswith(f".{key}"):
            return attribute_owner(str(value.target))
    path = module_path(node)
    return f"{path} ({node.name})" if path else node.name


def _kept(node: fx.Node, args: dict[str, object], reason: str) -> AffineSite:
    record = BnRecord(_bn_name(node, args), module_kind(node, "batch_norm"), action=KEPT, reason=reason)
    return AffineSite(record, node, node, [node])


def per_channel(value: torch.Tensor | None, like: fx.Node, axis: int = 1) -> torch.Tensor | None:
    """``value`` as a length-C fp64 vector when it broadcasts along ``axis`` of ``like`` only, else None."""
    dims, dims_shape = ndim(like), shape(like)
    if value is None or dims is None or dims < 2 or not value.is_floating_point():
        return None
    channels = dims_shape[axis] if dims_shape else None
    if not isinstance(channels, int):
        return None
    return maths.channel_vector(value.detach().to(torch.float64), axis, dims, channels)


def channel_axis(x: fx.Node) -> int:
    """The axis of ``x`` whose channels a constant Mul/Add scales: a linear layer's features (its last axis),
    else axis 1."""
    layer, dims = as_layer(x), ndim(x)
    return dims - 1 if layer is not None and layer.kind == "linear" and dims is not None and dims > 2 else 1


def _operands(node: fx.Node, gm: fx.GraphModule) -> tuple[fx.Node, torch.Tensor] | None:
    """(the computed operand, the stored constant) of a binary node."""
    for x, c in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
        value = constant(gm, c)
        if isinstance(x, fx.Node) and value is not None and x.op != "get_attr":
            return x, value
    return None


def constant_affine_site(gm: fx.GraphModule, node: fx.Node) -> AffineSite | None:
    """``x · c (+ d)`` or ``x + d`` with per-channel constants, when BN-like or right after a layer."""
    if node.target not in (aten.mul.Tensor, aten.add.Tensor) or node.kwargs.get("alpha", 1) != 1:
        return None
    found = _operands(node, gm)
    if found is None:
        return None
    x, axis = found[0], channel_axis(found[0])
    factor = per_channel(found[1], x, axis)
    if factor is None:
        return None
    channels = factor.numel()
    scale, shift = torch.ones(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    nodes = [node]
    if node.target == aten.add.Tensor:
        shift = factor
    else:
        scale = factor
        follow = _single_constant_add(node, gm, axis)
        if follow is not None:
            nodes, shift = [follow[0], node], follow[1]
    kind = module_kind(node, "Mul/Add")
    if "Norm" not in kind and not _after_layer(x):
        return None
    record = BnRecord(
        name=module_path(node) or node.name,
        kind=kind if "Norm" in kind else "Mul/Add",
        channels=channels,
        op="muladd",
    )
    return AffineSite(record, node, nodes[0], nodes, scale, shift, is_batchnorm_call=False, axis=axis)


def _single_constant_add(node: fx.Node, gm: fx.GraphModule, axis: int) -> tuple[fx.Node, torch.Tensor] | None:
    users = list(node.users)
    if len(users) != 1 or users[0].target != aten.add.Tensor or users[0].kwargs.get("alpha", 1) != 1:
        return None
    found = _operands(users[0], gm)
    shift = per_channel(found[1], node, axis) if found is not None and found[0] is node else None
    return None if shift is None else (users[0], shift)


def _after_layer(x: fx.Node) -> bool:
    """Whether ``x`` comes from a layer, through permutes and BatchNorms (which may fold into it)."""
    while isinstance(x.args[0] if x.args else None, fx.Node) and (
        is_permute(x) or x.target in BATCHNORMS or is_getitem_zero(x)
    ):
        x = x.args[0]  # type: ignore[assignment]
    return as_layer(x) is not None
