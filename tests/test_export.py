"""Export helpers: batch dimension naming, unused initializers, metadata, and external data for big models."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from bnfold import export
from bnfold.files import atomic_output


@pytest.fixture(scope="module")
def exported() -> export.ExportResult:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    return export.export_module(model, (torch.randn(2, 3, 8, 8),))


def test_batch_dimension_is_named_and_dynamic(exported: export.ExportResult) -> None:
    dims = exported.model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [3, 8, 8]


def test_no_unused_initializers_and_no_exporter_noise_on_stdout(
    exported: export.ExportResult, capsys: pytest.CaptureFixture[str]
) -> None:
    used = {name for node in exported.model.graph.node for name in node.input}
    assert all(t.name in used for t in exported.model.graph.initializer)
    export.export_module(nn.Linear(3, 2).eval(), (torch.randn(2, 3),))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_remove_unused_initializers_counts_what_it_drops(exported: export.ExportResult) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(exported.model)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "orphan"))
    assert export.remove_unused_initializers(model) == 1
    assert "orphan" not in {t.name for t in model.graph.initializer}


def test_annotate_writes_json_metadata(exported: export.ExportResult) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(exported.model)
    export.annotate(model, {"bnfold.fold": {"found": 2}, "bnfold.version": "x"})
    export.annotate(model, {"bnfold.version": "y"})
    props = {p.key: p.value for p in model.metadata_props}
    assert props["bnfold.fold"] == '{"found": 2}' and props["bnfold.version"] == "y"


def test_large_models_are_saved_with_external_data_under_the_final_name(
    exported: export.ExportResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)
    target = tmp_path / "big.onnx"
    with atomic_output(target) as temporary:
        export.save(exported.model, temporary, target.name)
    assert (tmp_path / "big.onnx.data").exists()
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    small = ort.InferenceSession(exported.model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        session.run(None, {session.get_inputs()[0].name: x})[0],
        small.run(None, {small.get_inputs()[0].name: x})[0],
        rtol=0,
        atol=0,
    )


def _exporter_tensor(folder: Path, name: str, values: np.ndarray) -> onnx.TensorProto:
    """A float32 initializer whose bytes are in the file ``folder / name``, as an exporter leaves it."""
    (folder / name).write_bytes(values.tobytes())
    tensor = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=list(values.shape))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=name)
    return tensor


def test_save_returns_the_sha256_of_the_data_file_it_wrote(tmp_path: Path) -> None:
    """The hash of ``.data`` is taken as the bytes are written: the same as hashing the file afterwards, with
    weights copied from an exporter's files (the padding between them included) and weights onnx appends
    from the message."""
    from bnfold.export.files import point_at_files

    values = {"w": np.arange(1001, dtype=np.float32), "u": np.arange(300, dtype=np.float32), "v": np.full(700, 2.5)}
    copied = [_exporter_tensor(tmp_path, name, values[name]) for name in ("w", "u")]
    in_message = onnx.numpy_helper.from_array(values["v"].astype(np.float32), "v")
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], [*copied, in_message]))
    point_at_files(model, tmp_path)
    path = tmp_path / "m.onnx"
    digest = export.save(model, path, external_data="always", in_place=True)
    data = tmp_path / "m.onnx.data"
    assert digest == hashlib.sha256(data.read_bytes()).hexdigest()
    offsets = [int(next(e.value for e in t.external_data if e.key == "offset")) for t in model.graph.initializer]
    assert offsets[:2] == [0, 4096] and offsets[2] >= 4096 + 1200  # padded copies, then what onnx appended
    loaded = onnx.load(str(path))
    for tensor in loaded.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(tensor), values[tensor.name])
    assert export.save(loaded, tmp_path / "one.onnx", external_data="never") is None


def test_count_ops_sees_batchnorm_nodes() -> None:
    node = onnx.helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])
    graph = onnx.helper.make_graph([node], "g", [], [])
    assert export.count_ops(onnx.helper.make_model(graph), "BatchNormalization") == 1


@pytest.mark.parametrize(
    ("floats", "mode", "split"),
    [
        (100_000, "auto", False),
        (300_000, "auto", True),
        (10, "always", True),
        (300_000, "never", False),
    ],
)
def test_external_data_path_follows_size_and_mode(floats: int, mode: str, split: bool, tmp_path: Path) -> None:
    weights = onnx.numpy_helper.from_array(np.zeros(floats, np.float32), "w")
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], [weights]))
    path = export.external_data_path(model, tmp_path / "m.onnx", mode)
    assert path == (tmp_path / "m.onnx.data" if split else None)


def test_tidy_lets_go_of_the_weights_it_was_given() -> None:
    """Rewrite rules keep the last graph they matched in; the weights of the model tidied are not kept
    with it (for a large model, a whole copy of them held through parity)."""
    import gc

    import onnx_ir as ir

    layer = nn.Linear(32, 16)
    weight = onnx.numpy_helper.from_array(layer.weight.detach().numpy(), "tidy_probe_weight")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gemm", ["x", "tidy_probe_weight"], ["y"], transB=1)],
        "probe",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 32])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 16])],
        [weight],
    )
    tidied = export.tidy(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]))
    assert [t.name for t in tidied.graph.initializer] == ["tidy_probe_weight"]
    gc.collect()
    held = [t for t in gc.get_objects() if isinstance(t, ir.TensorProtoTensor) and t.name == "tidy_probe_weight"]
    assert held == []


def test_save_stops_on_an_exporter_file_cut_short(tmp_path: Path) -> None:
    from bnfold.errors import ExportError
    from bnfold.export.files import point_at_files

    tensor = _exporter_tensor(tmp_path, "w", np.arange(1000, dtype=np.float32))
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], [tensor]))
    point_at_files(model, tmp_path)
    (tmp_path / "w").write_bytes(b"\0" * 100)  # shorter than the length it was pointed at
    with pytest.raises(ExportError, match="ends before its tensor w"):
        export.save(model, tmp_path / "m.onnx", external_data="always", in_place=True)
    assert not (tmp_path / "m.onnx.data").exists()
