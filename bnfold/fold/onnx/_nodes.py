"""Reading nodes: names for messages, attributes, the outer names a node's subgraphs read."""

from __future__ import annotations

from typing import Any

import onnx


def label(node: onnx.NodeProto) -> str:
    """How records and reasons name a node: ``Conv 'conv1'`` (its first output when it has no name)."""
    return f"{node.op_type} '{node_name(node)}'"


def node_name(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of one attribute of ``node``, or ``default``."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def set_attribute(node: onnx.NodeProto, name: str, value: object) -> None:
    """Set (or add) one attribute of ``node``."""
    for index, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[index]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def subgraph_references(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names read by the subgraphs of ``node`` (If, Loop, Scan, ...)."""
    names: set[str] = set()
    for attr in node.attribute:
        for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
            names |= _free_names(graph)
    return names


def _free_names(graph: onnx.GraphProto) -> set[str]:
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used |= {name for name in node.input if name} | subgraph_references(node)
        defined |= set(node.output)
    used |= {v.name for v in graph.output}
    return used - defined
