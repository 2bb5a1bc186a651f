"""What an exporter returns (:class:`ExportResult`), the exporters' names and opsets, and how their chatter is
captured (:func:`quiet`)."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any

import onnx

from bnfold.export.cleanup import count_ops
from bnfold.export.files import WrittenWeights

DEFAULT_OPSET = 18
EXPORTERS = ("auto", "torchscript", "dynamo")
DYNAMO = "torch.onnx.export (dynamo)"
TORCHSCRIPT = "torch.onnx.export (TorchScript)"
TORCHSCRIPT_MAX_OPSET = 20


@dataclass
class ExportResult:
    """An exported ONNX model and what the exporter said while making it. After ``convert`` wrote the model
    with external data, ``model`` is the graph as written, its weights left in the ``.data`` file
    (``onnx.external_data_helper.load_external_data_for_model`` reads them)."""

    model: onnx.ModelProto
    exporter: str
    opset: int
    warnings: list[str] = field(default_factory=list)
    files: tempfile.TemporaryDirectory[str] | None = None
    """The folder the weights were written into (``export_folded(..., weights_file=True)``, or the TorchScript
    exporter's own files past protobuf's 2 GB): until :func:`~bnfold.export.save` writes them beside the
    output, ``model``'s large initializers point at these files (by absolute path) instead of holding the
    weights, so the process never reads back what it has just written."""

    weights: WrittenWeights | None = None
    """The file in ``files`` the weights were written into by ``export_folded(..., weights_file=...)``, with
    its layout and hash: :func:`~bnfold.export.save` moves it into place when it can."""

    def release_files(self) -> None:
        """Remove the exporter's files (once ``model`` no longer points at them)."""
        if self.files is not None:
            self.files.cleanup()
            self.files = None
        self.weights = None

    def batchnorm_nodes(self) -> int:
        return count_ops(self.model, "BatchNormalization")


@contextlib.contextmanager
def quiet() -> Any:
    """Silence stdout, stderr, Python warnings and torch.onnx logging; yield the captured warnings."""
    captured: list[str] = []
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    sink = io.StringIO()
    with (
        warnings.catch_warnings(record=True) as caught,
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("always")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield captured
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
            seen = dict.fromkeys(
                str(w.message).splitlines()[0]
                for w in caught
                if not issubclass(w.category, (DeprecationWarning, FutureWarning))
            )
            captured.extend(seen)
