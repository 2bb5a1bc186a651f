"""Identity branch (RepVGG, MobileOne): ``conv(x) + bn(x)`` becomes one conv, the BN's ``s·x + t`` added to
its kernel as a centred one-hot tap (:func:`bnfold.fold.maths.absorb_identity`):

    W'[o, o mod C_in/g, centre] += s[o]        b'[o] += t[o]

Pattern: the affine (along the channel axis 1) has its output read only by an ``add`` whose other operand
is a sum (of adds read once) with a conv among its terms that reads the affine's own input and whose output
nothing else reads. Check: the conv maps C channels to C with stride 1 and a centred odd kernel with "same"
padding, so that its output has the input's shape and the one-hot tap reads x at the same position.
Rewrite: the conv's weight and bias; the sum takes the add's place, and the affine is removed.
"""

from __future__ import annotations

from bnfold.fold import maths
from bnfold.fold.reasons import reason
from bnfold.fold.rules.graph import Affine, FoldGraph, FoldLayer, Match, N, Plan, Rewrite, V


def match(graph: FoldGraph[N, V], affine: Affine[N, V]) -> Match:
    """The identity fold of ``affine``, why it does not fold as one, or None when it is no identity branch."""
    readers = graph.readers(affine.output)
    if affine.axis != 1 or len(readers) != 1 or graph.is_output(affine.output):
        return None
    add, slot = readers[0]
    operands = graph.inputs(add)
    if graph.pass_through(add) != "add" or len(operands) != 2:
        return None
    rest = operands[1 - slot]
    convs = [node for node in _terms(graph, rest) if _reads(graph, node, affine.input)]
    if not convs:
        return None  # no conv beside it reads the same input: not an identity branch
    if graph.exclusive(rest, (add, 1 - slot)) is not None or graph.producer(rest) is None:
        return None
    problems = []
    for conv in convs:
        layer = graph.layer(conv)
        problem = layer if isinstance(layer, str) else _problem(layer, affine.scale.numel())
        if problem is None and not isinstance(layer, str):
            return Plan("identity", [layer.name], _rewrite(graph, affine, layer, add, rest))
        problems.append(str(problem))
    return reason("identity", problems="; ".join(problems))


def _terms(graph: FoldGraph[N, V], value: V) -> list[N]:
    """The producers of the terms of the sum ``value`` (adds read once, by the sum, are opened)."""
    node = graph.producer(value)
    if node is None or len(graph.readers(value)) != 1 or graph.is_output(value):
        return []
    operands = graph.inputs(node) if graph.pass_through(node) == "add" else []
    if len(operands) == 2:
        return [term for operand in operands for term in _terms(graph, operand)]
    return [node]


def _reads(graph: FoldGraph[N, V], node: N, value: V) -> bool:
    return graph.layer_kind(node) == "conv" and graph.layer_input(node) == value


def _problem(layer: FoldLayer, channels: int) -> str | None:
    """Why ``layer`` cannot absorb an identity branch of ``channels`` channels, or None when it can."""
    if any(s != 1 for s in layer.strides):
        return f"{layer.name} has stride {layer.strides}"
    shape = layer.weight_shape
    if shape[0] != channels or shape[1] * layer.groups != channels:
        return f"{layer.name} does not map {channels} channels to {channels}"
    if not _same_padding(layer):
        return f"{layer.name} is not a centred odd kernel with 'same' padding"
    return None


def _same_padding(layer: FoldLayer) -> bool:
    kernel = list(layer.weight_shape[2:])
    if any(k % 2 == 0 for k in kernel):
        return False
    if layer.pads == "same":
        return True
    if layer.pads == "valid":
        return all(k == 1 for k in kernel)
    same = [d * (k - 1) // 2 for d, k in zip(layer.dilations, kernel, strict=True)]
    return layer.pads == same + same


def _rewrite(graph: FoldGraph[N, V], affine: Affine[N, V], layer: FoldLayer, add: N, rest: V) -> Rewrite:
    def rewrite() -> None:
        w, b = maths.absorb_identity(layer.weight(), layer.bias(), affine.scale, affine.shift, layer.groups)
        layer.write(w, b)
        graph.bypass_node(add, rest)
        graph.remove(affine)

    return rewrite
