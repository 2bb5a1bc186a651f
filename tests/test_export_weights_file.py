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
    expected = saved_bytes(exported(model, inputs, aside=False), tmp_path / "in_memory.onnx")
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


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _values(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def test_save_moves_the_weights_file_into_place_with_its_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bnfold.export import files

    model, inputs = mixed()
    result = export.export_folded(bnfold.fold(model, inputs).module, inputs, weights_file=tmp_path)
    assert result.weights is not None and Path(result.files.name).parent == tmp_path  # type: ignore[union-attr]
    written = result.weights.path
    monkeypatch.setattr(files, "copy_external_tensors", lambda *args: pytest.fail("copied, not moved"))
    path = tmp_path / "moved.onnx"
    digest = export.save(result.model, path, external_data="always", in_place=True, weights=result.weights)
    data = path.with_name("moved.onnx.data")
    assert not written.exists() and digest == _sha256(data)
    monkeypatch.undo()
    expected = tmp_path / "expected.onnx"
    export.save(exported(model, inputs, aside=False).model, expected, external_data="always")
    assert _values(path).keys() == _values(expected).keys()
    assert all(np.array_equal(_values(path)[k], v) for k, v in _values(expected).items())
    offsets = [int(e.value) for t in result.model.graph.initializer for e in t.external_data if e.key == "offset"]
    assert offsets and all(offset % files.PAGE == 0 for offset in offsets)


def test_save_copies_the_weights_file_when_a_pass_left_bytes_no_tensor_reads(tmp_path: Path) -> None:
    model, inputs = mixed()
    result = export.export_folded(bnfold.fold(model, inputs).module, inputs, weights_file=tmp_path)
    assert result.weights is not None
    external = [t for t in result.model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    dropped = external[0]  # as a merge pass drops a weight it replaced by one of its own
    result.model.graph.initializer.remove(dropped)
    kept = onnx.TensorProto()
    kept.CopyFrom(dropped)
    kept.name = "stand_in"
    kept.ClearField("external_data")
    kept.data_location = onnx.TensorProto.DEFAULT
    kept.raw_data = b"\0" * (4 * int(np.prod(kept.dims)))
    result.model.graph.initializer.append(kept)
    path = tmp_path / "copied.onnx"
    digest = export.save(result.model, path, external_data="always", in_place=True, weights=result.weights)
    assert result.weights.path.exists()  # left where it was: copied from
    assert digest == _sha256(path.with_name("copied.onnx.data"))
    assert {t.name for t in onnx.load(str(path)).graph.initializer} == {t.name for t in result.model.graph.initializer}


def test_save_of_a_model_it_must_leave_as_it_was_never_moves_the_file(tmp_path: Path) -> None:
    model, inputs = mixed()
    result = export.export_folded(bnfold.fold(model, inputs).module, inputs, weights_file=tmp_path)
    assert result.weights is not None
    export.save(result.model, tmp_path / "a.onnx", external_data="always", weights=result.weights)
    assert result.weights.path.exists()
    export.save(result.model, tmp_path / "b.onnx", external_data="always", in_place=True, weights=result.weights)
    assert not result.weights.path.exists()
    assert _sha256(tmp_path / "a.onnx.data") == _sha256(tmp_path / "b.onnx.data")


def test_convert_moves_the_weights_it_exported_beside_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bnfold.export import files

    copied: list[object] = []
    real = files.copy_external_tensors
    monkeypatch.setattr(files, "copy_external_tensors", lambda *args: copied.append(args) or real(*args))
    torch.manual_seed(0)
    model = randomise(nn.Sequential(nn.Linear(512, 1024), nn.BatchNorm1d(1024), nn.ReLU(), nn.Linear(1024, 8))).eval()
    path = tmp_path / "wide.onnx"
    config = bnfold.ConvertConfig(output=path, bench=False)
    result = bnfold.convert(model, config, example_inputs=(torch.randn(4, 512),))
    assert result.passed and copied == []
    data = path.with_name("wide.onnx.data")
    assert result.report["onnx"]["external_data_sha256"] == _sha256(data)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["wide.onnx", "wide.onnx.data", "wide.report.json", "wide.report.md", "wide.report.html"]
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 512)
    with torch.no_grad():
        expected = model.double()(x.double()).numpy()
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], expected, atol=1e-4)


def test_save_copies_when_a_tensor_lies_in_another_file(tmp_path: Path) -> None:
    from bnfold.export import files

    model, inputs = mixed()
    result = export.export_folded(bnfold.fold(model, inputs).module, inputs, weights_file=tmp_path)
    assert result.weights is not None
    tensor = next(t for t in result.model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    info = {e.key: e.value for e in tensor.external_data}
    with result.weights.path.open("rb") as source:
        source.seek(int(info["offset"]))
        elsewhere = tmp_path / "elsewhere.bin"
        elsewhere.write_bytes(source.read(int(info["length"])))
    files._point(tensor, str(elsewhere), 0, int(info["length"]))
    path = tmp_path / "copied.onnx"
    export.save(result.model, path, external_data="always", in_place=True, weights=result.weights)
    assert result.weights.path.exists()
    expected = tmp_path / "expected.onnx"
    export.save(exported(model, inputs, aside=False).model, expected, external_data="always")
    assert all(np.array_equal(_values(path)[k], v) for k, v in _values(expected).items())


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory maps (Linux)")
@pytest.mark.parametrize("unmapped", [True, False])
def test_no_memory_map_of_the_weights_file_outlives_the_export(unmapped: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clean-up passes read weights through memory maps of the whole file; its pages would stay resident
    to the end of ``convert`` (``unmapped=False`` is the control: the maps are there without the release)."""
    from bnfold.export import cleanup

    if not unmapped:
        monkeypatch.setattr(cleanup, "_unmap", lambda tensor: None)
    torch.manual_seed(0)
    model = randomise(_TwoBranches()).eval()  # a RepVGG pair: the merge pass reads both kernels
    inputs = (torch.randn(2, 8, 6, 6),)
    result = export.export_folded(bnfold.fold(model, inputs).module, inputs, weights_file=True)
    assert result.weights is not None and result.model.graph.node[0].op_type == "Conv"
    mapped = str(result.weights.path) in Path("/proc/self/maps").read_text()
    assert mapped is not unmapped


class _TwoBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 64, 3, padding=1), nn.Conv2d(8, 64, 1)
        self.bn_a, self.bn_b = nn.BatchNorm2d(64), nn.BatchNorm2d(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn_a(self.a(x)) + self.bn_b(self.b(x)))


@pytest.mark.parametrize("lean", [True, False])
def test_the_exporters_shape_inference_is_not_given_the_weights(lean: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``lean=False`` is the control: exported as usual, the exporter hands every weight to shape inference."""
    names = ("_jit_pass_onnx_graph_shape_type_inference", "_jit_pass_onnx_node_shape_type_inference")
    stock = {name: getattr(torch._C, name) for name in names}
    given: list[int] = []

    def spy(function: object) -> object:
        def inference(target: object, params: dict[str, object], opset: int) -> object:
            floating = [v for v in params.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
            given.append(max((v.numel() for v in floating), default=0))
            return function(target, params, opset)  # type: ignore[operator]

        return inference

    for name, function in stock.items():
        monkeypatch.setattr(torch._C, name, spy(function))
    model, inputs = mixed()
    exported(model, inputs, aside=lean)
    assert given and (max(given) <= weights_file.SHAPE_VALUE_ELEMENTS) is lean
    assert all(getattr(torch._C, name) is not function for name, function in stock.items())  # the spies, back


def test_a_kernel_the_clean_up_merged_goes_to_the_weights_file_not_into_the_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = randomise(_TwoBranches()).eval()
    inputs = (torch.randn(2, 8, 6, 6),)
    result = export.export_folded(bnfold.fold(model, inputs).module, inputs, weights_file=tmp_path)
    assert result.weights is not None
    (conv,) = [n for n in result.model.graph.node if n.op_type == "Conv"]  # the two branches, merged
    kernel = next(t for t in result.model.graph.initializer if t.name == conv.input[1])
    assert kernel.data_location == onnx.TensorProto.EXTERNAL and not kernel.HasField("raw_data")
    assert {e.value for e in kernel.external_data if e.key == "location"} == {str(result.weights.path)}
    assert result.weights.size == result.weights.path.stat().st_size
    path = tmp_path / "merged.onnx"
    digest = export.save(result.model, path, external_data="always", in_place=True, weights=result.weights)
    assert digest == _sha256(path.with_name("merged.onnx.data"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 8, 6, 6)
    with torch.no_grad():
        expected = model.double()(x.double()).numpy()
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], expected, atol=1e-5)
