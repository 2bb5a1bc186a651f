"""Naming ONNX nodes as the PyTorch module paths they were exported from, so that a record reads the same
(``layer1.0.bn1``) whether the network came as a ``.pt2`` archive, a TorchScript archive or an ONNX file.

Where the path comes from, first found wins:

1. the parameter names: both torch exporters keep the state-dict names of initializers
   (``layer1.0.bn1.running_mean`` → ``layer1.0.bn1``), as the aten-graph fold names BNs and layers (but a
   layer whose weight is another's too: step 2 first);
2. the scope the exporter recorded: the dynamo exporter's ``pkg.torch.onnx.name_scopes`` metadata
   (``['', 'layer1', 'layer1.0', 'layer1.0.bn1', 'batch_norm']``), the TorchScript exporter's node names
   (``/layer1/layer1.0/bn1/BatchNormalization``);
3. for a call made by the top-level module itself, the call's name (``mul_2``), as torch.fx names it;
4. else the node's own name.
"""

from __future__ import annotations

import ast
import re

import onnx

from bnfold.fold.onnx._nodes import node_name

_PARAMETER_SLOTS = {
    "BatchNormalization": ((3, "running_mean"), (1, "weight")),
    "Conv": ((1, "weight"),),
    "ConvTranspose": ((1, "weight"),),
    "Gemm": ((1, "weight"),),
    "MatMul": ((1, "weight"),),
}
_FX_CALLS = {"BatchNormalization": "batch_norm", "_native_batch_norm_legit_no_training": "batch_norm"}


def module_name(node: onnx.NodeProto, shared_weight: bool = False) -> str:
    """The module path of the PyTorch call ``node`` was exported from, or the node's name. A layer whose
    weight other layers read too (``b.weight = a.weight``: the exporters store it once, under one name) is
    named by its scope first, as the module that made the call, as the aten-graph fold names it."""
    if shared_weight:
        return _from_scopes(node) or _from_parameters(node) or node_name(node)
    return _from_parameters(node) or _from_scopes(node) or node_name(node)


def _from_parameters(node: onnx.NodeProto) -> str | None:
    for slot, leaf in _PARAMETER_SLOTS.get(node.op_type, ()):
        name = node.input[slot] if slot < len(node.input) else ""
        name = name.removesuffix("_folded")
        if name.endswith(f".{leaf}"):
            return name[: -len(leaf) - 1]
    return None


def _from_scopes(node: onnx.NodeProto) -> str | None:
    scopes = _dynamo_scopes(node)
    if scopes is None:
        scopes = _torchscript_scopes(node)
    if not scopes:
        return None
    *modules, call = scopes
    if modules:
        return modules[-1]
    return _fx_call(call)


def _dynamo_scopes(node: onnx.NodeProto) -> list[str] | None:
    text = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
    if text is None:
        return None
    try:
        scopes = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return [str(s) for s in scopes if s] if isinstance(scopes, list) else None


def _torchscript_scopes(node: onnx.NodeProto) -> list[str] | None:
    """``/layer1/layer1.0/bn1/BatchNormalization_2`` → ``['layer1', 'layer1.0', 'layer1.0.bn1', 'batch_norm_2']``.

    The exporter writes a scope either as the attribute name (``bn1``) or as the full path (``layer1.0``).
    """
    if not node.name.startswith("/"):
        return None
    *parts, call = node.name[1:].split("/")
    paths: list[str] = []
    for part in parts:
        parent = paths[-1] if paths else ""
        paths.append(part if not parent or part.startswith(f"{parent}.") else f"{parent}.{part}")
    return [*paths, _snake(call)]


def _snake(call: str) -> str:
    match = re.fullmatch(r"([A-Za-z]+)(_\d+)?", call)
    if match is None:
        return call
    op, suffix = match.groups()
    return _FX_CALLS.get(op, re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower()) + (suffix or "")


def _fx_call(call: str) -> str:
    base = call.rstrip("_0123456789")
    suffix = call[len(base) :]
    return _FX_CALLS[base] + suffix if base in _FX_CALLS else call
