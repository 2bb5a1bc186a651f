"""An editable index over an ONNX GraphProto: who produces and who consumes each value.

The fold rules read constants and rewire nodes through this index instead of scanning the graph, so a
whole pass stays linear in the graph size. Constants are initializers and ``Constant`` nodes; an initializer
that is also a graph input is not one (the caller may feed it). A parameter is rewritten in place only when
this one input slot uses it; otherwise the node gets an initializer of its own.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from bnfold.errors import FoldError
from bnfold.fold.onnx._nodes import attribute, label, node_name, set_attribute, subgraph_references
from bnfold.fold.reasons import reason

__all__ = [
    "Graph",
    "Use",
    "ValueType",
    "attribute",
    "label",
    "node_name",
    "set_attribute",
    "subgraph_references",
]

Use = tuple[onnx.NodeProto, int]  # (consumer, input slot); slot -1 is a reference from a subgraph


@dataclass(frozen=True)
class ValueType:
    """What shape inference knows about a value."""

    elem_type: int
    rank: int | None
    dims: tuple[int | str | None, ...] | None = None  # each an int, a symbolic name, or None (unknown)


class Graph:
    """The main graph of a model, indexed for folding; :func:`._cleanup.write_back` stores the edits."""

    def __init__(self, graph: onnx.GraphProto, types: dict[str, ValueType]) -> None:
        self.proto = graph
        self.types = types
        self.outputs = {v.name for v in graph.output}
        self.inputs = {v.name for v in graph.input}
        self.initializers = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.uses: dict[str, list[Use]] = defaultdict(list)
        self._position: dict[int, tuple[int, int]] = {}
        self._nodes: dict[int, onnx.NodeProto] = {}
        self._taken = set(self.initializers) | self.inputs | self.outputs
        self._serial = itertools.count(1)
        for index, node in enumerate(graph.node):
            self._add(node, (index, 0))

    # ---- reading -------------------------------------------------------------------------------
    def nodes(self) -> list[onnx.NodeProto]:
        """The live nodes in graph order."""
        return sorted(self._nodes.values(), key=lambda n: self._position[id(n)])

    def alive(self, node: onnx.NodeProto) -> bool:
        return id(node) in self._nodes

    def rank(self, name: str) -> int | None:
        known = self.types.get(name)
        return known.rank if known else None

    def dims(self, name: str) -> tuple[int | str | None, ...] | None:
        """The dimensions shape inference gave ``name`` (ints, symbolic names, None where unknown)."""
        known = self.types.get(name)
        return known.dims if known else None

    def readers(self, name: str) -> list[Use]:
        """The input slots that read ``name`` (slot -1: a subgraph of that node reads it)."""
        return list(self.uses.get(name, []))

    def value_readers(self, name: str) -> list[Use]:
        """The input slots that read the values of ``name``: all but those of a ``Shape`` or ``Size`` node,
        which read its dimensions alone (no fold changes them)."""
        return [(node, slot) for node, slot in self.uses.get(name, []) if not _reads_dims_only(node)]

    def exclusive(self, name: str, use: Use) -> str | None:
        """Why the values of ``name`` are not read by ``use`` alone, or None when they are."""
        source = self.producer.get(name)
        what = label(source) if source is not None else f"value '{name}'"
        uses = self.value_readers(name)
        if name not in self.outputs and len(uses) == 1 and _same(uses[0], use):
            return None
        others = [repr(o) for o in sorted({node_name(n) for n, slot in uses if not _same((n, slot), use)})]
        others += ["the model output"] if name in self.outputs else []
        return reason("shared", node=what, others=", ".join(others) or "another input of the same node")

    def depends_on(self, name: str, source: str, limit: int = 64) -> bool:
        """Whether the value ``name`` is computed from the value ``source`` (looking at most ``limit`` nodes
        up the graph)."""
        seen: set[int] = set()  # ids of the nodes visited
        todo = [name]
        while todo and len(seen) < limit:
            value = todo.pop()
            if value == source:
                return True
            node = self.producer.get(value)
            if node is not None and id(node) not in seen:
                seen.add(id(node))
                todo.extend(n for n in node.input if n)
        return False

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant input, or None when ``name`` is computed at run time or can be fed.

        Initializers and ``Constant`` nodes are constants (constant subgraphs were evaluated into
        initializers before folding, :mod:`._evaluate`); an initializer that is also a graph input is not:
        the caller may feed another value.
        """
        if name in self.initializers:
            return None if name in self.inputs else _to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            return _constant_node_value(node)
        return None

    def overridable(self, name: str) -> bool:
        """Whether ``name`` is an initializer the caller can replace by feeding the graph input of that name."""
        return name in self.initializers and name in self.inputs

    # ---- editing -------------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        """A value or node name not used anywhere in the graph yet."""
        name = base
        while name in self._taken:
            name = f"{base}_{next(self._serial)}"
        self._taken.add(name)
        return name

    def write_param(self, node: onnx.NodeProto, slot: int, value: np.ndarray, base: str) -> None:
        """Make input ``slot`` of ``node`` the constant ``value``; a shared old one is left to its users."""
        name = node.input[slot] if slot < len(node.input) else ""
        uses = self.uses.get(name, [])
        own = len(uses) == 1 and _same(uses[0], (node, slot)) and name not in self.outputs
        if name in self.initializers and own:
            self.initializers[name].CopyFrom(numpy_helper.from_array(value, name))
            return
        fresh = self.add_initializer(base, value)
        while len(node.input) <= slot:
            node.input.append("")
        self.set_input(node, slot, fresh)

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        """A new initializer holding ``value``; returns its (fresh) name."""
        name = self.fresh(base)
        self.proto.initializer.append(numpy_helper.from_array(value, name))
        self.initializers[name] = self.proto.initializer[-1]
        return name

    def set_input(self, node: onnx.NodeProto, slot: int, name: str) -> None:
        old = node.input[slot]
        if old:
            self._forget(old, (node, slot))
        node.input[slot] = name
        if name:
            self.uses[name].append((node, slot))

    def set_output(self, node: onnx.NodeProto, slot: int, name: str) -> None:
        del self.producer[node.output[slot]]
        node.output[slot] = name
        self.producer[name] = node

    def remove(self, node: onnx.NodeProto) -> None:
        for slot, name in enumerate(node.input):
            if name:
                self._forget(name, (node, slot))
        for name in subgraph_references(node):
            self._forget(name, (node, -1))
        for name in node.output:
            if self.producer.get(name) is node:
                del self.producer[name]
        del self._nodes[id(node)]

    def insert(self, node: onnx.NodeProto, at: onnx.NodeProto) -> onnx.NodeProto:
        """Add ``node`` to the graph, ordered right after ``at`` (and after anything inserted there)."""
        major = self._position[id(at)][0]
        self._add(node, (major, next(self._serial)))
        return node

    def _forget(self, name: str, use: Use) -> None:
        uses = self.uses[name]
        uses.pop(next(i for i, u in enumerate(uses) if _same(u, use)))

    def _add(self, node: onnx.NodeProto, position: tuple[int, int]) -> None:
        self._nodes[id(node)] = node
        self._position[id(node)] = position
        for slot, name in enumerate(node.input):
            if name:
                self.uses[name].append((node, slot))
        for name in subgraph_references(node):
            self.uses[name].append((node, -1))
        for name in node.output:
            if name:
                self.producer[name] = node
                self._taken.add(name)
        if node.name:
            self._taken.add(node.name)


def _reads_dims_only(node: onnx.NodeProto) -> bool:
    return node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx")


def _same(a: Use, b: Use) -> bool:
    return a[0] is b[0] and a[1] == b[1]


def _to_array(tensor: onnx.TensorProto) -> np.ndarray:
    external = tensor.data_location == onnx.TensorProto.EXTERNAL and not tensor.HasField("raw_data")
    if external:
        raise FoldError(
            f"initializer '{tensor.name}' keeps its data in an external file that was not loaded; "
            "load the model with onnx.load(path) (load_external_data=True) before folding"
        )
    return numpy_helper.to_array(tensor)


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return _to_array(attr.t)
        if attr.name in ("value_float", "value_int"):
            return np.array(onnx.helper.get_attribute_value(attr))
        if attr.name in ("value_floats", "value_ints"):
            return np.array(list(onnx.helper.get_attribute_value(attr)))
    return None
