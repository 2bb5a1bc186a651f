"""export_folded: the TorchScript exporter on folded graphs, the dynamo exporter as fallback and as option.

Numbers are checked against the unfolded module in float64, at batch sizes other than the example's."""

from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import bnfold
from bnfold import export
from bnfold.errors import ExportError


class Net(nn.Module):
    """Conv-BN-ReLU, two BNs that cannot fold (each after a ReLU) and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.kept = nn.BatchNorm2d(6)
        self.kept2 = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.kept2(torch.relu(self.kept(torch.relu(self.bn(self.conv(x))))))
        return self.head(torch.flatten(nn.functional.adaptive_max_pool2d(y, 1), 1))


def trained_net() -> nn.Module:
    torch.manual_seed(0)
    net = Net()
    for bn in (net.bn, net.kept, net.kept2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def folded() -> tuple[nn.Module, bnfold.FoldResult, tuple[torch.Tensor, ...]]:
    net = trained_net()
    inputs = (torch.randn(4, 3, 10, 10),)
    return net, bnfold.fold(net, inputs), inputs


def run(model: export.ExportResult, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


@pytest.mark.parametrize("batch", [1, 7])
def test_torchscript_output_matches_fp64_at_other_batch_sizes(folded, batch: int) -> None:
    net, result, inputs = folded
    exported = export.export_folded(result.module, inputs, exporter="torchscript")
    assert exported.exporter == export.TORCHSCRIPT
    x = np.random.default_rng(batch).standard_normal((batch, 3, 10, 10)).astype(np.float32)
    with torch.no_grad():
        expected = net.double()(torch.from_numpy(x).double()).numpy()
    net.float()
    np.testing.assert_allclose(run(exported, x), expected, atol=1e-4, rtol=1e-4)


def test_both_exporters_name_inputs_outputs_and_the_batch_alike(folded) -> None:
    _, result, inputs = folded
    ts = export.export_folded(result.module, inputs, exporter="torchscript").model
    dynamo = export.export_folded(result.module, inputs, exporter="dynamo").model
    for graph_ts, graph_dynamo in ((ts.graph.input, dynamo.graph.input), (ts.graph.output, dynamo.graph.output)):
        assert [v.name for v in graph_ts] == [v.name for v in graph_dynamo]
        assert [v.type.tensor_type.shape.dim[0].dim_param for v in graph_ts] == ["batch"] * len(graph_ts)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_static_batch_stays_static_and_a_batch_of_one_does_not_pin_it(folded, exporter: str) -> None:
    net, _, _ = folded
    inputs = (torch.randn(1, 3, 10, 10),)  # alone, torch.export would specialise a batch of 1
    static = export.export_folded(bnfold.fold(net, inputs, dynamic_batch=False).module, inputs, exporter=exporter)
    assert static.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    dynamic = export.export_folded(bnfold.fold(net, inputs).module, inputs, exporter=exporter)
    assert dynamic.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_no_identity_nodes_left_for_shared_constants(folded) -> None:
    _, result, inputs = folded
    exported = export.export_folded(result.module, inputs, exporter="torchscript")
    assert export.count_ops(exported.model, "Identity") == 0
    assert exported.batchnorm_nodes() == 2  # the BNs after a ReLU, frozen with the same mean 0 and var 1


def test_auto_falls_back_on_the_dynamo_exporter_and_says_why(folded, monkeypatch: pytest.MonkeyPatch) -> None:
    _, result, inputs = folded
    real = torch.onnx.export

    def no_torchscript(*args, **kwargs):
        if kwargs.get("dynamo") is False:
            raise RuntimeError("TorchScript exporter removed\nsecond line")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_torchscript)
    exported = export.export_folded(result.module, inputs)
    assert exported.exporter == export.DYNAMO
    assert exported.warnings[0].startswith("exported with the dynamo exporter: the TorchScript exporter failed")
    assert "TorchScript exporter removed" in exported.warnings[0] and "\n" not in exported.warnings[0]
    with pytest.raises(ExportError, match="TorchScript exporter failed"):
        export.export_folded(result.module, inputs, exporter="torchscript")


def test_opsets_past_the_torchscript_exporter_go_to_dynamo(folded) -> None:
    _, result, inputs = folded
    with pytest.raises(ExportError, match="stops at opset 20"):
        export.export_folded(result.module, inputs, exporter="torchscript", opset=21)
    exported = export.export_folded(result.module, inputs, opset=21)
    assert exported.exporter == export.DYNAMO and exported.opset == 21


def test_unknown_exporter_is_refused(folded) -> None:
    _, result, inputs = folded
    with pytest.raises(ValueError, match="auto, torchscript, dynamo"):
        export.export_folded(result.module, inputs, exporter="tflite")


def test_constants_become_initializers_and_still_compute_the_same() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU6()).eval()
    inputs = (torch.randn(2, 3, 5, 5),)
    exported = export.export_folded(bnfold.fold(model, inputs).module, inputs, exporter="torchscript")
    assert export.count_ops(exported.model, "Constant") == 0 and export.count_ops(exported.model, "Clip") == 1
    x = np.random.default_rng(0).standard_normal((3, 3, 5, 5)).astype(np.float32) * 10
    with torch.no_grad():
        expected = model.double()(torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(run(exported, x), expected, atol=1e-5, rtol=1e-5)


def test_equal_small_initializers_are_shared_and_large_ones_kept() -> None:
    from onnx import helper, numpy_helper

    bound = np.array(6.0, np.float32)
    weights = np.ones((1, 4), np.float32) * 0.5
    nodes = [
        helper.make_node("Clip", ["x", "lo_a", "hi_a"], ["a"]),
        helper.make_node("Clip", ["a", "lo_b", "hi_b"], ["b"]),
        helper.make_node("MatMul", ["b", "w_a"], ["c"]),
        helper.make_node("MatMul", ["b", "w_b"], ["d"]),
        helper.make_node("Add", ["c", "d"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), n) for n in ("lo_a", "lo_b")]
    inits += [numpy_helper.from_array(bound, n) for n in ("hi_a", "hi_b")]
    inits += [numpy_helper.from_array(np.tile(weights, (100, 1)).T.copy(), n) for n in ("w_a", "w_b")]  # 1.6 kB each
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 100])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32) * 10
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    model = export.tidy(model)
    assert sorted(t.name for t in model.graph.initializer) == ["hi_a", "lo_a", "w_a", "w_b"]
    onnx.checker.check_model(model)
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_torchscript_exporter_writes_batch_statistics_with_a_dynamic_batch(opset: int) -> None:
    """A BN without running statistics normalises each batch with its own: exported with a dynamic batch
    (torch's own symbolic needs a fixed one), it still does, at any batch size."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    nn.init.uniform_(model[1].weight, 0.5, 1.5)
    proto, _ = export.run_torchscript_exporter(
        torch.jit.trace(model, torch.randn(2, 3, 6, 6)),
        (torch.randn(2, 3, 6, 6),),
        opset_version=opset,
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
        do_constant_folding=False,
    )
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    wide = model.double()
    for batch in (1, 5):
        x = torch.randn(batch, 3, 6, 6)
        with torch.no_grad():
            expected = wide(x.double()).numpy()
        (got,) = session.run(None, {"x": x.numpy()})
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    from torch.onnx._internal.torchscript_exporter import registration

    group = registration.registry.get_function_group("aten::batch_norm")
    assert group is not None and not group._functions.overridden(opset)  # torch's own symbolic is back


class FlattenBySize(nn.Module):
    """``x.view(x.size(0), -1)``, as much published code flattens: the size comes from the dynamic batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return self.fc(y.view(y.size(0), -1))


def test_sizes_from_a_dynamic_batch_are_never_written_as_the_examples() -> None:
    """The TorchScript exporter would trace ``y.size(0)`` as the example's batch, a constant: it refuses,
    and ``auto`` exports with dynamo, whose graph runs at any batch like the fp64 original."""
    model, x = FlattenBySize().eval(), torch.randn(2, 3, 6, 6)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    folded = bnfold.fold(program, (x,)).module
    with pytest.raises(ExportError, match="size computed from a dynamic dimension"):
        export.export_folded(folded, (x,), exporter="torchscript")
    result = export.export_folded(folded, (x,))
    assert result.exporter == export.DYNAMO and "dynamic dimension" in result.warnings[0]
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        xs = torch.randn(batch, 3, 6, 6, generator=torch.Generator().manual_seed(batch))
        (got,) = session.run(None, {session.get_inputs()[0].name: xs.numpy()})
        with torch.no_grad():
            expected = model.double()(xs.double())
        model.float()
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def batch_statistics_net() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A BN without running statistics whose output is the model's own."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    nn.init.uniform_(model[1].weight, 0.5, 1.5)
    return model, (torch.randn(4, 3, 6, 6),)


def assert_computes_batch_statistics(model: nn.Module, exported: export.ExportResult) -> None:
    """Each batch normalised with its own statistics, like the fp64 original, at any batch size."""
    onnx.checker.check_model(exported.model)
    wide = copy.deepcopy(model).double()
    for batch in (2, 5):
        x = torch.randn(batch, 3, 6, 6)
        with torch.no_grad():
            expected = wide(x.double()).numpy()
        np.testing.assert_allclose(run(exported, x.numpy()), expected, rtol=1e-4, atol=1e-4)


FIRST_EXPORT = """
import sys
sys.path.insert(0, sys.argv[1])
import bnfold, test_export_exporters as t
from bnfold import export
model, inputs = t.batch_statistics_net()
exported = export.export_folded(bnfold.fold(model, inputs).module, inputs, exporter="torchscript")
t.assert_computes_batch_statistics(model, exported)
"""


def test_the_first_export_of_a_process_writes_batch_statistics_at_the_opset_asked_for() -> None:
    """Before a process's first export, torch's exporter knows only opset 9's BatchNorm (five outputs, which
    the schema of later opsets refuses): the symbolic bnfold puts in front of it must take the opset's."""
    done = subprocess.run(
        [sys.executable, "-c", FIRST_EXPORT, str(Path(__file__).parent)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("weights_file", [False, True])
def test_a_model_the_torchscript_exporter_writes_against_the_schema_is_exported_with_dynamo(
    weights_file: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the TorchScript exporter writes that onnx.checker refuses (here its BatchNormalization given
    the two extra outputs of opset 9's): asked for by name it says so in one line, its weights file removed;
    "auto" exports with dynamo instead."""
    from bnfold.export import torchscript

    real = torchscript.tidy

    def against_the_schema(model: onnx.ModelProto, *args: object) -> onnx.ModelProto:
        model = real(model, *args)
        for node in model.graph.node:
            if node.op_type == "BatchNormalization":
                node.output.extend(["saved_mean", "saved_var"][: 5 - len(node.output)])
        return model

    monkeypatch.setattr(torchscript, "tidy", against_the_schema)
    model, inputs = batch_statistics_net()
    folded = bnfold.fold(model, inputs)
    files_before = set(Path(tempfile.gettempdir()).glob(".bnfold-export-*"))
    with pytest.raises(ExportError, match=r"onnx\.checker refuses: .*BatchNormalization") as refused:
        export.export_folded(folded.module, inputs, exporter="torchscript", weights_file=weights_file)
    assert "\n" not in str(refused.value)
    assert set(Path(tempfile.gettempdir()).glob(".bnfold-export-*")) == files_before
    exported = export.export_folded(folded.module, inputs, weights_file=weights_file)
    assert exported.exporter == export.DYNAMO and "onnx.checker refuses" in exported.warnings[0]
    assert_computes_batch_statistics(model, exported)
