"""In-place arithmetic as the functional op it computes, so that every rule that looks for an add or a mul
sees ``y += bn(x)`` (RepVGG's and MobileOne's published blocks), ``add_``, ``*=`` and ``mul_`` too.

``a.add_(b)`` computes ``a + b`` and writes it into ``a``. When nothing else reads ``a`` (the in-place op is
its only reader, and ``a`` is an intermediate, not a model input or a parameter), no one can observe the
write, and the call is exactly ``add(a, b)``. Otherwise the call stays as it is, and rules do not look
through it.
"""

from __future__ import annotations

import torch
from torch import fx

from bnfold.fold.graph import readers

aten = torch.ops.aten

FUNCTIONAL = {
    aten.add_.Tensor: aten.add.Tensor,
    aten.mul_.Tensor: aten.mul.Tensor,
    aten.sub_.Tensor: aten.sub.Tensor,
    aten.div_.Tensor: aten.div.Tensor,
}


def functionalise_arithmetic(gm: fx.GraphModule) -> int:
    """Rewrite, in place, every unobservable in-place add/mul/sub/div as its functional op; returns how many."""
    count = 0
    for node in gm.graph.nodes:
        target = FUNCTIONAL.get(node.target) if node.op == "call_function" else None
        if target is None or not _unobservable(node):
            continue
        node.target = target
        count += 1
    if count:
        gm.recompile()
    return count


def _unobservable(node: fx.Node) -> bool:
    written = node.args[0] if node.args else None
    return isinstance(written, fx.Node) and written.op == "call_function" and readers(written) == [node]
