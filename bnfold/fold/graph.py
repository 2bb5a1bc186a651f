"""Reading and editing the aten-level fx graph that torch.export produces.

Layers are recognised by their aten op; their arguments are read through the op's schema so that
positional, keyword and default arguments look alike. Parameters are ``get_attr`` nodes; a fold either
rewrites a parameter in place (when only this layer uses it) or gives the layer a copy of its own.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

aten = torch.ops.aten

CONVOLUTIONS = {
    aten.conv1d.default,
    aten.conv2d.default,
    aten.conv3d.default,
    aten.conv1d.padding,
    aten.conv2d.padding,
    aten.conv3d.padding,
    aten.convolution.default,
}
TRANSPOSED = {aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input}
LINEAR = {aten.linear.default}
LAYER_MODULES = {"Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear"}
"""torch.nn's layer classes: a call they make is named by the module's path."""
OWN_PREFIX = "_bnfold_"
"""The prefix of the buffers bnfold adds (an evaluated constant, a private copy of a shared weight)."""
BATCHNORMS = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}

# Ops that move or copy data without touching values: an affine passes through them, its axis remapped.
PERMUTES = {aten.permute.default, aten.transpose.int, aten.clone.default, aten.contiguous.default, aten.alias.default}

# Dropouts, each the identity when its ``train`` argument is False (a model traced in eval mode).
DROPOUTS = {
    getattr(aten, name).default
    for kind in ("dropout", "alpha_dropout", "feature_dropout", "feature_alpha_dropout")
    for name in (kind, f"{kind}_")
}


def arguments(node: fx.Node) -> dict[str, Any]:
    """The call's arguments by schema name, defaults filled in."""
    schema = node.target._schema  # type: ignore[union-attr]
    out: dict[str, Any] = {}
    for index, arg in enumerate(schema.arguments):
        if index < len(node.args):
            out[arg.name] = node.args[index]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        else:
            out[arg.name] = arg.default_value if arg.has_default_value() else None
    return out


def set_argument(node: fx.Node, name: str, value: Any) -> None:
    """Set one schema argument of a call, positional if it was given positionally."""
    names = [a.name for a in node.target._schema.arguments]  # type: ignore[union-attr]
    index = names.index(name)
    if index < len(node.args):
        args = list(node.args)
        args[index] = value
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, name: value}


def ndim(node: fx.Node) -> int | None:
    value = node.meta.get("val")
    return value.dim() if isinstance(value, torch.Tensor) else None


def shape(node: fx.Node) -> tuple[Any, ...] | None:
    value = node.meta.get("val")
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def fetch(gm: fx.GraphModule, target: str) -> torch.Tensor:
    owner: Any = gm
    for part in target.split("."):
        owner = getattr(owner, part)
    tensor: torch.Tensor = owner
    return tensor


def constant(gm: fx.GraphModule, value: Any) -> torch.Tensor | None:
    """The tensor behind a ``get_attr`` node, or None for anything computed at run time."""
    if isinstance(value, fx.Node) and value.op == "get_attr":
        found = fetch(gm, str(value.target))
        return found if isinstance(found, torch.Tensor) else None
    return None


def drop_inference_dropouts(gm: fx.GraphModule) -> int:
    """Remove, in place, every dropout that runs with ``train=False``: it returns its input as it is (the
    in-place ones write nothing), and would otherwise stand between a BN and the layer it folds into
    (``BatchNorm1d -> Dropout -> Linear``, a common classifier head). Returns how many were removed."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in DROPOUTS and arguments(node)["train"] is False:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            count += 1
    return count


def readers(node: fx.Node) -> list[fx.Node]:
    """The nodes that read ``node``'s value, leaving out torch.export's input guard (``_guards_fn``)."""
    return [u for u in node.users if not (u.op == "call_module" and u.target == "_guards_fn")]


def set_tensor(gm: fx.GraphModule, target: str, value: torch.Tensor, owned: bool = False) -> None:
    """Point the attribute ``target`` at a copy of ``value`` (a Parameter stays a Parameter); the tensor it
    held before is not modified, so a caller still holding it keeps its values. ``owned``: ``value`` was
    made for this and nothing else holds it, so it is taken as it is (no copy of a large weight)."""
    owner_path, _, leaf = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    old = getattr(owner, leaf)
    value = value.detach() if owned else value.detach().clone()
    if isinstance(old, nn.Parameter):
        setattr(owner, leaf, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(owner, leaf, value)


def attribute_uses(gm: fx.GraphModule, target: str) -> int:
    """How many calls read the attribute ``target``, over every get_attr node naming it."""
    return sum(len(n.users) for n in gm.graph.nodes if n.op == "get_attr" and n.target == target)


@dataclass
class Layer:
    """A conv, transposed conv or linear call, with what a fold needs to know about it."""

    node: fx.Node
    kind: str  # "conv" | "conv_transpose" | "linear"
    weight: fx.Node
    bias: fx.Node | None
    groups: int
    padding: Any
    stride: Any
    dilation: list[int]

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return tuple(fetch(self.node.graph.owning_module, str(self.weight.target)).shape)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        """The layer module that made the call (``b`` for ``b(x)``, even when ``b.weight`` is ``a.weight``,
        which torch.export stores under one name; a subclass of a torch.nn layer too), or the module that
        computed its weight (weight normalisation, a mask: the weight is a constant of bnfold's), else the
        owner of the weight (a functional call)."""
        stack = self.node.meta.get("nn_module_stack")
        computed = str(self.weight.target).startswith(OWN_PREFIX)
        if stack:
            path, kind = list(stack.values())[-1]
            if path and (computed or _layer_class(kind)):
                return str(path)
        return attribute_owner(str(self.weight.target))

    def output_channel_axis(self) -> int | None:
        if self.kind != "linear":
            return 1
        dims = ndim(self.node)
        return None if dims is None else dims - 1

    def input_channel_axis(self) -> int | None:
        if self.kind != "linear":
            return 1
        dims = ndim(self.node.args[0]) if isinstance(self.node.args[0], fx.Node) else None
        return None if dims is None else dims - 1


def _layer_class(kind: object) -> bool:
    """Whether a module class (or its qualified name, as a loaded archive keeps it) is a torch.nn layer."""
    if isinstance(kind, type):
        return any(c.__name__ in LAYER_MODULES and c.__module__.startswith("torch.nn") for c in kind.__mro__)
    return str(kind).rsplit(".", 1)[-1] in LAYER_MODULES


def as_layer(node: fx.Node) -> Layer | None:
    """The node as a foldable layer, or None when it is not one or its weight is computed at run time."""
    if node.op != "call_function":
        return None
    if node.target in CONVOLUTIONS or node.target in TRANSPOSED:
        args = arguments(node)
        transposed = node.target in TRANSPOSED or bool(args.get("transposed", False))
        kind = "conv_transpose" if transposed else "conv"
        groups, padding, stride = int(args["groups"]), args["padding"], args["stride"]
        dilation = args["dilation"]
        dilation = [int(d) for d in dilation] if isinstance(dilation, (list, tuple)) else [int(dilation)]
    elif node.target in LINEAR:
        args = arguments(node)
        kind, groups, padding, stride, dilation = "linear", 1, 0, 1, [1]
    else:
        return None
    weight, bias = args["weight"], args["bias"]
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
        return None
    if bias is not None and not (isinstance(bias, fx.Node) and bias.op == "get_attr"):
        return None
    layer = Layer(node, kind, weight, bias, groups, padding, stride, dilation)
    if len(layer.dilation) == 1 and kind != "linear":
        layer.dilation = layer.dilation * (len(layer.weight_shape) - 2)
    return layer


def attribute_owner(target: str) -> str:
    """``layer1.0.conv1.weight`` → ``layer1.0.conv1``."""
    return target.rsplit(".", 1)[0] if "." in target else target


def display(node: fx.Node) -> str:
    """A name for a node that a user can find in their model."""
    if node.op == "placeholder":
        return f"the model input '{node.target}'"
    layer = as_layer(node)
    if layer is not None:
        return layer.name
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        if path and path != node.name:
            return f"{path} ({node.name})"
    return node.name


def is_permute(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in PERMUTES


def is_getitem_zero(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is operator.getitem and bool(node.args[1] == 0)


class ParameterWriter:
    """Writes folded parameters into a GraphModule, copying any that another call still reads."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self._count = 0

    def gm_tensor(self, node: fx.Node) -> torch.Tensor:
        return fetch(self.gm, str(node.target))

    def replace(
        self, user: fx.Node, arg_name: str, current: fx.Node | None, value: torch.Tensor, owned: bool = False
    ) -> None:
        """Give ``user`` the tensor ``value`` for its argument ``arg_name`` (``owned``: see :func:`set_tensor`)."""
        if current is not None and current.op == "get_attr" and self._exclusive(current, user):
            set_tensor(self.gm, str(current.target), value, owned)
            return
        set_argument(user, arg_name, self.new_attribute(user, value, hint=arg_name, owned=owned))

    def new_attribute(self, before: fx.Node, value: torch.Tensor, hint: str, owned: bool = False) -> fx.Node:
        """A fresh buffer on the module and a get_attr node reading it, inserted before ``before``."""
        self._count += 1
        name = f"{OWN_PREFIX}{hint}_{self._count}"
        while hasattr(self.gm, name):
            self._count += 1
            name = f"{OWN_PREFIX}{hint}_{self._count}"
        self.gm.register_buffer(name, value.detach() if owned else value.detach().clone())
        with self.gm.graph.inserting_before(before):
            return self.gm.graph.get_attr(name)

    def _exclusive(self, attr: fx.Node, user: fx.Node) -> bool:
        return set(attr.users) == {user} and attribute_uses(self.gm, str(attr.target)) == 1


def remove_unused(gm: fx.GraphModule) -> None:
    """Drop get_attr nodes nothing reads, then the parameters and buffers no node names."""
    for node in reversed(list(gm.graph.nodes)):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    called = tuple(f"{n.target}." for n in gm.graph.nodes if n.op == "call_module")
    for name in [n for n, _ in gm.named_parameters()] + [n for n, _ in gm.named_buffers()]:
        if name not in used and not name.startswith(called):
            owner_path, _, leaf = name.rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            delattr(owner, leaf)
    gm.recompile()
