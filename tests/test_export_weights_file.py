"""The TorchScript export with its weights written straight from the module into a file
(``export_folded(..., weights_file=True)``, what ``convert`` uses): the model it writes is the one the
exporter writes with the weights in the message, byte for byte, and runs as the fp64 original does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from fold_models import randomise
from fold_registry import REGISTRY, Entry
from torch import nn

import bnfold
from bnfold import export
from bnfold.export import weights_file


def saved_bytes(result: export.ExportResult, path: Path, external_data: str = "never") -> bytes:
    export.save(result.model, path, external_data=external_data)
    return path.read_bytes()


def exported(model: nn.Module, inputs: tuple[torch.Tensor, ...], aside: bool) -> export.ExportResult:
    folded = bnfold.fold(model, inputs).module
    return export.export_folded(folded, inputs, exporter="torchscript", weights_file=aside)


class Mixed(nn.Module):
    """Weights large and small, a buffer read by the graph, a Linear head: every kind of stored tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.bn = nn.BatchNorm2d(64)
        self.head = nn.Linear(64, 10)
        self.register_buffer("offset", torch.linspace(-1, 1, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.head(y) + self.offset


def mixed(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return randomise(Mixed()).to(dtype), (torch.randn(2, 3, 8, 8, dtype=dtype),)


@pytest.mark.parametrize("entry", REGISTRY, ids=lambda e: e.name)
def test_the_written_model_is_the_exporters_byte_for_byte(entry: Entry, tmp_path: Path) -> None:
    model, inputs = entry.build()
    try:
        expected = saved_bytes(exported(model, inputs, aside=False), tmp_path / "in_memory.onnx")
    except bnfold.BnfoldError:
        pytest.skip("the TorchScript exporter does not take this graph")
    result = exported(model, inputs, aside=True)
    assert saved_bytes(result, tmp_path / "aside.onnx") == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_large_weights_point_into_one_file_small_ones_stay_in_the_graph(dtype: torch.dtype, tmp_path: Path) -> None:
    result = exported(*mixed(dtype), aside=True)
    assert result.files is not None
    folder = Path(result.files.name).resolve()
    sizes = {t.name: export.tensor_bytes(_alone(t)) for t in result.model.graph.initializer}
    external = {t.name for t in result.model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    assert external == {name for name, size in sizes.items() if size >= weights_file.INLINE_BYTES} != set()
    locations = {e.value for t in result.model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {str(folder / "weights.bin")}
    assert {i.name for i in result.model.graph.input} == {"x"}
    memory = exported(*mixed(dtype), aside=False)
    assert saved_bytes(result, tmp_path / "a.onnx") == saved_bytes(memory, tmp_path / "b.onnx")
    result.release_files()
    assert not folder.exists()


def _alone(tensor: onnx.TensorProto) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.graph.initializer.append(tensor)
    return model


def test_the_model_saved_with_external_data_runs_as_the_fp64_original(tmp_path: Path) -> None:
    model, inputs = mixed()
    result = exported(model, inputs, aside=True)
    path = tmp_path / "mixed.onnx"
    export.save(result.model, path, external_data="always")
    result.release_files()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 8, 8)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = model.double()(x.double()).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_where_the_exporters_parameters_cannot_be_had_it_exports_as_usual(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.onnx._internal.torchscript_exporter import utils

    monkeypatch.delattr(utils, "_model_to_graph")
    with weights_file.exporter_parameters() as parameters:
        assert parameters is None
    monkeypatch.undo()
    stock = utils._model_to_graph
    seen: list[bool] = []
    real = weights_file.export_with_weights_file

    def recorded(*args: object) -> object:
        out = real(*args)  # type: ignore[arg-type]
        seen.append(out is None)
        return out

    monkeypatch.setattr(export.torchscript, "export_with_weights_file", recorded)
    monkeypatch.setattr(weights_file, "_matches", lambda value, tensor: False)  # a stored value it cannot match
    result = exported(*mixed(), aside=True)
    assert seen == [True] and result.files is None
    assert all(t.HasField("raw_data") for t in result.model.graph.initializer)
    assert utils._model_to_graph is stock


def test_the_exporter_is_restored_when_it_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.onnx._internal.torchscript_exporter import utils

    stock = utils._model_to_graph
    model, inputs = mixed()
    folded = bnfold.fold(model, inputs).module

    def failing(*args: object, **kwargs: object) -> None:
        assert utils._model_to_graph is not stock  # the export runs with its parameters captured
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(torch.onnx, "export", failing)
    with pytest.raises(bnfold.BnfoldError, match="exporter broke"):
        export.export_folded(folded, inputs, exporter="torchscript", weights_file=True)
    assert utils._model_to_graph is stock


def test_convert_never_has_the_exporter_write_the_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from conftest import MODELS

    calls: list[object] = []
    real = torch.onnx.export

    def spied(*args: object, **kwargs: object) -> object:
        calls.append(kwargs.get("export_params", True))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.onnx, "export", spied)
    result = bnfold.convert(MODELS / "digits_cnn.pt2", bnfold.ConvertConfig(output=tmp_path / "d.onnx", bench=False))
    assert result.passed and calls == [False]
