"""Writing an edited :class:`Graph` back into its GraphProto: live nodes in order, dead nodes dropped,
unused initializers (and the graph inputs an old IR declared for them) and stale value_info removed.
Graph inputs and outputs and the names of surviving values are left as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bnfold.fold.onnx._graph import Graph, subgraph_references


def write_back(graph: Graph, initializer_inputs: set[str]) -> None:
    """Store ``graph``'s edits in its proto. ``initializer_inputs`` are inputs that declare initializers."""
    proto = graph.proto
    needed = set(graph.outputs)
    live = []
    for node in reversed(graph.nodes()):
        if any(name in needed for name in node.output if name):
            live.append(node)
            needed |= {name for name in node.input if name} | subgraph_references(node)
    live.reverse()
    del proto.node[:]
    proto.node.extend(live)
    _drop(proto.initializer, lambda name: name not in needed)
    _drop(proto.input, lambda name: name in initializer_inputs and name not in needed)
    produced = {name for node in live for name in node.output}
    _drop(proto.value_info, lambda name: name not in produced)


def _drop(field: Any, unwanted: Callable[[str], bool]) -> None:
    """Delete, from the back, the entries of a repeated field whose name is unwanted (no data copied)."""
    for index in reversed(range(len(field))):
        if unwanted(field[index].name):
            del field[index]
