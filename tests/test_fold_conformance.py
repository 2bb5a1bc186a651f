"""One fold, whatever the format: every registry model, given as a torch.export archive, a TorchScript
archive or an ONNX file (from torch's TorchScript exporter, and from its dynamo exporter without its
optimizer), must give the same records: the same BNs by module path, each with the same action, fold and
target layers, and the same counts. The ``.pt2`` records are the reference.

Known differences are listed in ``KNOWN`` (xfail, strict: a fix that removes one must remove its entry).
"""

from __future__ import annotations

import io
from pathlib import Path

import onnx
import pytest
import torch
from fold_registry import REGISTRY, Entry

from bnfold.convert import ConvertConfig, inspect_model
from bnfold.export import quiet
from bnfold.fold.reasons import kinds
from bnfold.fold.records import BnRecord, summarise

FORMATS = ("torchscript", "onnx-torchscript", "onnx-dynamo")

KNOWN: dict[tuple[str, str], str] = {
    **{
        ("frozen_bn_after_relu", fmt): "from ONNX a Mul/Add is recognised only right after a layer: an ONNX graph "
        "does not name the module class (FrozenBatchNorm2d) that wrote it"
        for fmt in FORMATS
    },
    **{
        ("channel_offset", fmt): "from ONNX an Add alone is not recognised as a per-channel affine: the exporters "
        "write a linear layer's own bias as an Add after its MatMul"
        for fmt in FORMATS
    },
}

_records: dict[tuple[str, str], list[BnRecord]] = {}


def _write(entry: Entry, fmt: str, folder: Path) -> tuple[Path, tuple[torch.Tensor, ...]]:
    model, inputs = entry.build()
    path = folder / f"{entry.name}.{fmt}"
    with quiet(), torch.no_grad():
        if fmt == "pt2":
            torch.export.save(torch.export.export(model, inputs), path)
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, inputs), path)
        elif fmt == "onnx-torchscript":
            buffer = io.BytesIO()
            torch.onnx.export(model, inputs, buffer, dynamo=False, do_constant_folding=False)
            path.write_bytes(buffer.getvalue())
        else:
            onnx.save(torch.onnx.export(model, inputs, dynamo=True, optimize=False).model_proto, path)
    return path, inputs


def records(entry: Entry, fmt: str, folder: Path) -> list[BnRecord]:
    key = (entry.name, fmt)
    if key not in _records:
        path, inputs = _write(entry, fmt, folder)
        shapes = tuple(tuple(x.shape) for x in inputs) if fmt == "torchscript" else ()
        _records[key] = inspect_model(path, ConvertConfig(input_shapes=shapes, trust_code=fmt == "torchscript"))
    return _records[key]


def folds(found: list[BnRecord]) -> dict[str, tuple[str, str, str | None, list[str], list[str]]]:
    return {r.name: (r.op, r.action, r.how, r.into, kinds(r.reason)) for r in found}


def _cases() -> list[object]:
    cases = []
    for entry in REGISTRY:
        for fmt in FORMATS:
            known = KNOWN.get((entry.name, fmt))
            marks = [pytest.mark.xfail(reason=known, strict=True)] if known else []
            cases.append(pytest.param(entry, fmt, marks=marks, id=f"{entry.name}-{fmt}"))
    return cases


@pytest.mark.parametrize(("entry", "fmt"), _cases())
def test_same_folds_from_every_format(entry: Entry, fmt: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.getbasetemp()
    expected = records(entry, "pt2", folder)
    actual = records(entry, fmt, folder)
    assert folds(actual) == folds(expected)
    assert summarise(actual) == summarise(expected)
