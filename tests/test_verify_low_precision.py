"""Parity of float16 and bfloat16 models: checked in their own dtype, against the fp64 reference.

onnxruntime's CPU provider runs a bfloat16 ONNX file widened to float32 (:mod:`bnfold.verify.widen`); the
widened model must compute what the bfloat16 weights define, and a wrong bfloat16 file must still fail.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import run_main
from fold_models import image, randomise
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from bnfold.bench import bench_onnx
from bnfold.bench.torch_latency import bench_torch
from bnfold.convert import ConvertConfig, convert
from bnfold.report.html import render_html
from bnfold.report.markdown import render_markdown
from bnfold.report.summary import summary_lines
from bnfold.verify.widen import WIDENED_NOTE, holds_bfloat16, widened


def block() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)
    )


def low_precision(dtype: torch.dtype, seed: int = 82) -> tuple[nn.Module, torch.Tensor]:
    return randomise(block(), seed=seed).to(dtype).eval(), image(2, 3).to(dtype)


def checks_by_candidate(report: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for check in report["parity"]["checks"]:
        found.setdefault(check["candidate"], []).append(check)
    return found


@pytest.mark.parametrize(("dtype", "short", "atol"), [(torch.bfloat16, "bf16", 5e-2), (torch.float16, "fp16", 1e-2)])
def test_low_precision_parity_runs_in_the_models_dtype(
    tmp_path: Path, dtype: torch.dtype, short: str, atol: float
) -> None:
    model, x = low_precision(dtype)
    config = ConvertConfig(output=tmp_path / "m.onnx", bench=False, write_reports=False)
    report = convert(model, example_inputs=(x,), config=config).report
    checks = checks_by_candidate(report)
    assert {f"original {short}", f"folded {short} (torch)"} <= set(checks), list(checks)
    for name, rows in checks.items():
        for row in rows:
            assert row["error"] is None and row["max_abs_err"] is not None, (name, row["error"])
            assert row["atol"] == atol
    # the noise yardstick is the original model in its own dtype: far above fp32 rounding
    baseline = checks[f"original {short}"][0]["max_abs_err"]
    assert baseline > 1e-4
    assert report["verdict"]["passed"], report["verdict"]
    assert (WIDENED_NOTE in report["parity"]["notes"]) == (dtype == torch.bfloat16)
    # what users read names the original as it ran
    assert f"original {short} alone" in "\n".join(summary_lines(report))
    assert f"original {short} ({short} noise)" in render_html(report)
    assert f"the original {short} model's own" in render_markdown(report)
    assert f"× {short} error" in render_markdown(report) and f"× {short} err" in render_html(report)
    assert f"{short} arithmetic itself" in render_html(report) and "fp32" not in render_html(report).split("<svg")[1]


def _bfloat16_file(tmp_path: Path) -> tuple[Path, Path]:
    model, x = low_precision(torch.bfloat16)
    source = tmp_path / "bf16.pt2"
    torch.export.save(torch.export.export(model, (x,)), source)
    assert run_main("convert", source, "--no-bench", "-q") == 0
    return source, source.with_suffix(".onnx")


def test_a_wrong_bfloat16_file_fails_at_the_export_stage(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    source, folded = _bfloat16_file(tmp_path)
    assert run_main("verify", source, folded, "-q", "--report", tmp_path / "good.json") == 0  # control
    # nothing can time it on the CPU provider: one line saying so, not a traceback
    capfd.readouterr()
    assert run_main("bench", folded, "--providers", "cpu") == 2
    err = capfd.readouterr().err
    assert err.startswith("Error: nothing to time: onnxruntime cannot run") and err.count("\n") == 1, err

    model = onnx.load(str(folded))
    weight = next(t for t in model.graph.initializer if t.data_type == TensorProto.BFLOAT16 and len(t.dims) == 4)
    wrong = (numpy_helper.to_array(weight).astype(np.float32) * 1.25).astype(ml_dtypes.bfloat16)
    weight.CopyFrom(numpy_helper.from_array(wrong, weight.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    assert run_main("verify", source, broken, "-q", "--report", tmp_path / "bad.json") == 1


def _bfloat16_graph() -> onnx.ModelProto:
    """x (bf16) → Conv (bf16 weight, bias) → Mul by a bf16 Constant → Cast to float → Cast to bf16."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 2, 3, 3)).astype(ml_dtypes.bfloat16)
    b = rng.standard_normal(4).astype(ml_dtypes.bfloat16)
    half = numpy_helper.from_array(np.array(0.5, dtype=ml_dtypes.bfloat16), "half")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Constant", [], ["c"], value=half),
        helper.make_node("Mul", ["conv", "c"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["wide"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["wide"], ["y"], to=TensorProto.BFLOAT16),
    ]
    graph = helper.make_graph(
        nodes,
        "bf16",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [1, 4, 5, 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_widened_model_computes_what_its_bfloat16_weights_define() -> None:
    model = _bfloat16_graph()
    assert holds_bfloat16(model)
    wide = widened(model)
    assert not holds_bfloat16(wide)
    assert model.graph.initializer[0].data_type == TensorProto.BFLOAT16  # the input model is not changed
    onnx.checker.check_model(wide, full_check=True)

    x = np.random.default_rng(4).standard_normal((1, 2, 5, 5)).astype(ml_dtypes.bfloat16)
    session = ort.InferenceSession(wide.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.astype(np.float32)})

    def f64(name: str) -> torch.Tensor:
        tensor = next(t for t in model.graph.initializer if t.name == name)
        return torch.from_numpy(numpy_helper.to_array(tensor).astype(np.float64))

    xs = torch.from_numpy(x.astype(np.float64))
    expected = torch.nn.functional.conv2d(xs, f64("w"), f64("b"), padding=1) * 0.5
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_latency_of_a_bfloat16_model(tmp_path: Path) -> None:
    """Eager timing casts the float32 arrays to the module's dtype; a provider that cannot run the file
    is skipped with a warning saying why, not a traceback."""
    model, x = low_precision(torch.bfloat16)
    arrays = lambda batch: (x.float().numpy(),)  # noqa: E731
    eager = bench_torch({"folded": model}, arrays, threads=1, warmup=1, min_runs=2, min_seconds=0, max_runs=2)
    assert [r.model for r in eager] == ["folded"]

    onnx_model = _bfloat16_graph()
    with pytest.warns(RuntimeWarning, match="its latency is not measured"):
        timed = bench_onnx({"m": onnx_model.SerializeToString()}, lambda b: (np.zeros((1, 2, 5, 5), np.float32),))
    assert timed == []
