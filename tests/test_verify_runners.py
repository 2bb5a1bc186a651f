"""Runners (torch in fp32/fp64, onnxruntime) and provider selection."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from bnfold.verify import available_providers, ort_runner, select_providers, torch_runner
from bnfold.verify.providers import CUDA_MISSING


def linear_onnx(layer: nn.Linear) -> bytes:
    """The ONNX graph of ``layer`` (a Gemm), built by hand so the test needs no exporter."""
    w = numpy_helper.from_array(layer.weight.detach().numpy(), "w")
    b = numpy_helper.from_array(layer.bias.detach().numpy(), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", layer.in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", layer.out_features])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


class TwoOutputs(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, object]:
        return {"a": x * 2, "rest": (x.sum(), "not a tensor", [x.to(torch.int64)])}


def test_torch_runner_flattens_nested_outputs_in_order() -> None:
    out = torch_runner(TwoOutputs())((np.ones((2, 3), dtype=np.float32),))
    assert [o.shape for o in out] == [(2, 3), (), (2, 3)]
    assert out[0].dtype == np.float32 and out[2].dtype == np.int64


def test_fp64_runner_works_on_a_copy_and_casts_inputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    out = torch_runner(model, torch.float64)((x,))
    assert out[0].dtype == np.float64
    assert all(p.dtype == torch.float32 for p in model.state_dict().values() if p.is_floating_point())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.inference_mode():
        expected = model.double()(torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(out[0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("optimization", ["all", "disabled"])
def test_ort_runner_matches_torch_and_casts_inputs(optimization: str) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    runner = ort_runner(linear_onnx(layer), optimization=optimization, threads=1)  # type: ignore[arg-type]
    x = np.random.default_rng(1).normal(size=(2, 4))  # float64: cast to the graph's float32
    (y,) = runner((x,))
    assert runner.output_names == ["y"] and y.dtype == np.float32
    np.testing.assert_allclose(y, torch_runner(layer)((x.astype(np.float32),))[0], atol=1e-6)


def test_ort_runner_rejects_a_wrong_input_count() -> None:
    runner = ort_runner(linear_onnx(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="takes 1 inputs, got 2"):
        runner((np.zeros((1, 2)), np.zeros((1, 2))))


def test_ort_runner_reads_a_file(tmp_path: object) -> None:
    path = tmp_path / "m.onnx"  # type: ignore[operator]
    onnx.save(onnx.load_from_string(linear_onnx(nn.Linear(2, 2))), path)
    assert ort_runner(path)((np.zeros((1, 2), np.float32),))[0].shape == (1, 2)


def test_unknown_optimization_level_is_refused() -> None:
    with pytest.raises(ValueError, match="optimization"):
        ort_runner(linear_onnx(nn.Linear(2, 2)), optimization="some")  # type: ignore[arg-type]


CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]
WITH_CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize("requested", ["auto", "cuda", "CUDA", ["cuda", "cpu"], "cpu,cuda"])
def test_cuda_asked_for_but_missing_gives_cpu_and_a_note(monkeypatch: pytest.MonkeyPatch, requested: object) -> None:
    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: CPU_ONLY)
    selection = select_providers(requested)  # type: ignore[arg-type]
    assert selection.providers == ("CPUExecutionProvider",) and not selection.cuda
    assert selection.notes == (CUDA_MISSING,)


@pytest.mark.parametrize("requested", ["auto", "cuda"])
def test_cuda_available_is_selected_after_cpu(monkeypatch: pytest.MonkeyPatch, requested: str) -> None:
    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: WITH_CUDA)
    selection = select_providers(requested)
    assert selection.providers == ("CPUExecutionProvider", "CUDAExecutionProvider") and selection.cuda
    assert selection.notes == ()


def test_cpu_only_request_has_no_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: WITH_CUDA)
    assert select_providers("cpu").providers == ("CPUExecutionProvider",)
    assert select_providers("cpu").notes == ()


def test_other_missing_provider_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: CPU_ONLY)
    selection = select_providers(["TensorrtExecutionProvider"])
    assert selection.providers == ("CPUExecutionProvider",)
    assert "TensorrtExecutionProvider not available" in selection.notes[0]


def test_available_providers_lists_cpu() -> None:
    assert "CPUExecutionProvider" in available_providers()


def test_converted_copy_is_fp64_keeps_ties_and_leaves_the_original_alone() -> None:
    from bnfold.verify.runners import converted_copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 4)).eval()
    model[2].weight = model[0].weight  # tied
    model[1].running_var.uniform_(0.5, 2.0)
    pointers = [t.data_ptr() for t in model.state_dict().values()]
    copy64 = converted_copy(model, torch.float64)
    assert all(t.dtype == torch.float64 for t in copy64.state_dict().values() if t.is_floating_point())
    assert copy64[2].weight is copy64[0].weight and isinstance(copy64[0].weight, nn.Parameter)
    assert all(t.dtype == torch.float32 for t in model.state_dict().values() if t.is_floating_point())
    assert [t.data_ptr() for t in model.state_dict().values()] == pointers
    for name, value in model.state_dict().items():
        assert torch.equal(copy64.state_dict()[name], value.to(copy64.state_dict()[name].dtype))
    x = torch.randn(3, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(copy64(x), model.double()(x))


class ReadsWeights(nn.Module):
    """A tied weight, a weight read through a view, and a buffer: the ways a weight reaches an operator."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.bn, self.last = nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Linear(6, 6)
        self.last.weight = self.first.weight
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.first(x)) * self.scale
        return self.last(y) + y @ self.first.weight.t()


class ReusesModules(nn.Module):
    """A conv and a BatchNorm called twice, a residual sum, a buffer read in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4), nn.BatchNorm1d(4))
        self.register_buffer("shift", torch.linspace(-1.0, 1.0, 3).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = self.bn(self.conv(y)) + x + self.shift
        return self.head(y)


def randomised(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with BatchNorm statistics and affine parameters away from their defaults."""
    generator = torch.Generator().manual_seed(7)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator))
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator))
    return model.eval()


CASES = {
    "weights read through ties and views": (ReadsWeights, (5, 6)),
    "reused modules, buffers, BN": (ReusesModules, (2, 3, 8, 8)),
}


@pytest.mark.parametrize("as_program", [False, True], ids=["eager", "torch.export"])
@pytest.mark.parametrize("case", list(CASES))
def test_fp64_reference_casts_weights_as_read_and_equals_a_plain_fp64_copy(case: str, as_program: bool) -> None:
    """At any size: no float64 copy of the model is made, the caller's module is untouched, and the outputs
    equal those of an independent reference (``copy.deepcopy(model).double()``) bit for bit."""
    import copy

    build, shape = CASES[case]
    torch.manual_seed(0)
    model = randomised(build())
    x = torch.randn(*shape).numpy()
    module = torch.export.export(model, (torch.from_numpy(x),)).module() if as_program else model
    before = {k: (v.dtype, v.data_ptr()) for k, v in module.state_dict().items()}
    runner = torch_runner(module, torch.float64)
    assert runner.module is module and runner.weights is not None  # no copy of the model is made
    first, second = runner((x,)), runner((x * 0.5,))
    assert runner.module is module and runner.weights is not None  # nothing made it fall back on a copy
    independent = copy.deepcopy(model).double()
    with torch.inference_mode():
        expected = [independent(torch.from_numpy(v).double()).numpy() for v in (x, x * 0.5)]
    assert first[0].dtype == np.float64
    np.testing.assert_array_equal(first[0], expected[0])
    np.testing.assert_array_equal(second[0], expected[1])
    assert {k: (v.dtype, v.data_ptr()) for k, v in module.state_dict().items()} == before


def test_the_reference_holds_one_layer_in_float64_at_a_time() -> None:
    """The largest float64 tensor alive while the reference runs is one layer's weight, not the model's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestFloat64(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                    self.largest = max(self.largest, t.untyped_storage().nbytes())
            return out

    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(8)]).eval()
    runner = torch_runner(model, torch.float64)
    with LargestFloat64() as seen:
        runner((np.ones((2, 64), np.float32),))
    assert 64 * 64 * 8 <= seen.largest < 2 * 64 * 64 * 8


class ReadsADtype(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.to(self.layer.weight.dtype))


class CastsToAWeightsDtype(nn.Module):
    """Casts its input to a child's weight dtype, then only promotes: no error, so only the guard tells."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) * x.to(self.layer.weight.dtype)


@pytest.mark.parametrize("build", [ReadsADtype, CastsToAWeightsDtype])
def test_an_eager_model_that_casts_to_a_weights_dtype_is_run_again_on_a_float64_copy(build: type) -> None:
    import copy

    model = build().eval()
    runner = torch_runner(model, torch.float64)
    x = (np.arange(6, dtype=np.float32).reshape(2, 3) / 3.0).astype(np.float32)
    out = runner((x,))
    assert runner.weights is None and runner.module.layer.weight.dtype == torch.float64
    assert model.layer.weight.dtype == torch.float32
    with torch.inference_mode():
        expected = copy.deepcopy(model).double()(torch.from_numpy(x).double()).numpy()
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(runner((x,))[0], expected)  # later calls run on the copy


@pytest.mark.parametrize("name", ["digits_cnn", "tabular_mlp"])
def test_parity_of_the_shipped_models_is_the_same_with_a_float64_copy_as_reference(
    name: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parity block of ``convert`` is unchanged, number for number, when the reference runs on a
    float64 copy of the model instead of casting its weights as read."""
    from conftest import MODELS

    from bnfold import ConvertConfig, convert
    from bnfold.verify import runners

    def parity(folder: str) -> list[dict[str, object]]:
        config = ConvertConfig(output=tmp_path / folder / f"{name}.onnx", bench=False, write_reports=False)  # type: ignore[operator]
        (tmp_path / folder).mkdir()  # type: ignore[operator]
        checks: list[dict[str, object]] = convert(MODELS / f"{name}.pt2", config).report["parity"]["checks"]
        return checks

    streamed = parity("streamed")
    with monkeypatch.context() as patch:
        original = runners.TorchRunner.__init__

        def on_a_copy(self: runners.TorchRunner, module: nn.Module, dtype: torch.dtype = torch.float32) -> None:
            original(self, module, dtype)
            if self.weights is not None:
                self.module, self.weights = runners.converted_copy(module, dtype), None

        patch.setattr(runners.TorchRunner, "__init__", on_a_copy)
        copied = parity("copied")
    assert streamed == copied and any(c["reference"] == "original fp64 (torch)" for c in streamed)


def test_a_model_onnxruntime_has_no_kernel_for_says_which_op_and_what_runs() -> None:
    """onnxruntime's CPU provider has no float64 Conv: the runner names the op and the way out."""
    weight = numpy_helper.from_array(np.ones((2, 3, 1, 1)), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 2, 4, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    with pytest.raises(RuntimeError, match=r"has no kernel for Conv\(11\) .*a float64 model: a float32 copy") as said:
        ort_runner(model)
    assert "NOT_IMPLEMENTED" in str(said.value.__cause__)  # onnxruntime's own refusal, reworded
