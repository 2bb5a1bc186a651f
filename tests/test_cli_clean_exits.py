"""Every failure the user can cause is exit 2 with one ``Error:`` line, no traceback, nothing on stdout and
nothing written; inputs stay byte-identical. ``--debug`` adds the traceback and keeps the exit code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import run_main, snapshot
from onnx import numpy_helper
from torch import nn

FAST = ("--no-bench", "--random-batches", "0", "-q")
FACTORY = """
import sys

from torch import nn


def exits():
    sys.exit(7)


def interrupts():
    raise KeyboardInterrupt


def small():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
"""


def _small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


def _edit(source: Path, target: Path, change: object) -> None:
    model = onnx.load(source)
    change(model)  # type: ignore[operator]
    onnx.save(model, target)


def _initializer(model: onnx.ModelProto, node_op: str, index: int) -> onnx.TensorProto:
    node = next(n for n in model.graph.node if n.op_type == node_op)
    return next(t for t in model.graph.initializer if t.name == node.input[index])


def _bn_too_long(model: onnx.ModelProto) -> None:
    tensor = _initializer(model, "BatchNormalization", 1)
    values = numpy_helper.to_array(tensor)
    tensor.CopyFrom(numpy_helper.from_array(np.concatenate([values, values[:1]]), tensor.name))


def _bytes_short(model: onnx.ModelProto) -> None:
    tensor = _initializer(model, "BatchNormalization", 2)
    tensor.raw_data = tensor.raw_data[:-4]


def _unknown_op(model: onnx.ModelProto) -> None:
    model.graph.node[-1].op_type = "NoSuchOp"


def _future_opset(model: onnx.ModelProto) -> None:
    model.opset_import[0].version = 99


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    model, example = _small(), (torch.randn(2, 1, 8, 8),)
    torch.onnx.export(
        model,
        example,
        root / "small.onnx",
        dynamo=False,
        do_constant_folding=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "b"}, "logits": {0: "b"}},
    )
    torch.onnx.export(model, example, root / "static.onnx", dynamo=False, input_names=["x"])
    torch.export.save(torch.export.export(model, example), root / "small.pt2")
    torch.save(model.state_dict(), root / "small.state.pt")
    for name, change in (
        ("bn_length", _bn_too_long),
        ("bytes_short", _bytes_short),
        ("unknown_op", _unknown_op),
        ("future_opset", _future_opset),
    ):
        _edit(root / "small.onnx", root / f"{name}.onnx", change)
    np.savez(root / "wrong_shape.npz", x=np.zeros((2, 1, 5, 5), np.float32))
    np.savez(root / "integer.npz", x=np.zeros((2, 1, 8, 8), np.int64))
    np.savez(root / "complex.npz", x=np.zeros((2, 1, 8, 8), np.complex64))
    np.savez(root / "batch3.npz", x=np.zeros((3, 1, 8, 8), np.float32))
    bad = {
        "schema": "bnfold.report/1",
        "fold": {"batchnorm_found": "x"},
        "onnx": {"batchnorm_nodes": [1]},
        "parity": {"passed": False, "checks": "abc"},
        "verdict": {"passed": 1},
    }
    (root / "bad_types.report.json").write_text(json.dumps(bad))
    (root / "factories.py").write_text(FACTORY)
    return root


CASES = {
    "onnx-bn-parameters-wrong-length": (["convert", "bn_length.onnx"], "different lengths"),
    "onnx-initializer-bytes-short": (["convert", "bytes_short.onnx"], "needs 16"),
    "onnx-unknown-operator": (["convert", "unknown_op.onnx"], "onnxruntime cannot run it"),
    "onnx-future-opset": (["convert", "future_opset.onnx"], "onnxruntime cannot run it"),
    "input-shape-too-large": (["convert", "small.pt2", "--input-shape", "100000,100000,1000,1000"], "elements"),
    "input-shape-overflow": (["convert", "small.pt2", "--input-shape", "9" * 25 + ",1,8,8"], "elements"),
    "data-wrong-shape": (["convert", "small.pt2", "--data", "wrong_shape.npz"], "takes 2x1x8x8"),
    "data-wrong-batch-static-model": (["convert", "small.pt2", "--data", "batch3.npz"], "takes 2x1x8x8"),
    "data-integer": (["convert", "small.pt2", "--data", "integer.npz"], "int64"),
    "data-complex": (["convert", "small.onnx", "--data", "complex.npz"], "complex64"),
    "atol-nan": (["convert", "small.pt2", "--atol", "nan"], "--atol"),
    "rtol-negative": (["convert", "small.pt2", "--rtol", "-1"], "--rtol"),
    "tolerance-nan": (["convert", "small.pt2", "--tolerance", "0=nan,nan"], "--tolerance"),
    "tolerance-negative": (["convert", "small.pt2", "--tolerance", "0=-1,0"], "--tolerance"),
    "tolerance-empty-name": (["convert", "small.pt2", "--tolerance", "=1e-3,1e-3"], "--tolerance"),
    "tolerance-unknown-output": (["convert", "small.onnx", "--tolerance", "probs=1e-3,1e-3"], "'logits'"),
    "tolerance-index-out-of-range": (["convert", "small.pt2", "--tolerance", "3=1e-3,1e-3"], "outputs are"),
    "factory-sys-exit": (
        ["convert", "small.state.pt", "--model", "factories:exits", "--input-shape", "2,1,8,8"],
        "sys.exit(7)",
    ),
    "factory-keyboard-interrupt": (
        ["convert", "small.state.pt", "--model", "factories:interrupts", "--input-shape", "2,1,8,8"],
        "KeyboardInterrupt",
    ),
    "verify-tolerance-unknown-output": (["verify", "small.onnx", "small.onnx", "--tolerance", "nope=1,1"], "'logits'"),
    "check-fields-of-the-wrong-type": (["check", "bad_types.report.json"], "wrong type"),
    "opset-the-exporter-cannot-write": (["convert", "small.pt2", "--opset", "30"], "--opset 30"),
    "opset-other-than-an-onnx-input-has": (
        ["convert", "small.onnx", "--opset", "7"],
        "an ONNX input is folded as it is",
    ),
    "dynamic-for-an-onnx-input": (["convert", "small.onnx", "--dynamic", "none"], "--dynamic: an ONNX input is folded"),
    "exporter-for-an-onnx-input": (["convert", "small.onnx", "--exporter", "dynamo"], "--exporter dynamo: an ONNX"),
    "bench-batch-a-static-model-cannot-take": (["bench", "static.onnx", "--batch", "1,8"], "fixed batch of 2"),
}


@pytest.fixture
def work(files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    here = tmp_path / "work"
    shutil.copytree(files, here)
    monkeypatch.chdir(here)
    monkeypatch.syspath_prepend(str(here))
    return here


def _args(args: list[str]) -> list[str]:
    if args[0] == "convert":
        return [*args, "-o", "out.onnx", *FAST]
    return [*args, "-q"] if args[0] == "verify" else args


@pytest.mark.parametrize("case", sorted(CASES))
def test_exit_2_one_line_nothing_written(work: Path, case: str, capfd: pytest.CaptureFixture[str]) -> None:
    args, expect = CASES[case]
    before = snapshot(work)
    code = run_main(*_args(args))
    out, err = capfd.readouterr()
    assert code == 2, err
    assert out == "" and err.startswith("Error: ") and err.count("\n") == 1, err
    assert expect in err, err
    assert snapshot(work) == before


@pytest.mark.parametrize("case", ["onnx-bn-parameters-wrong-length", "factory-sys-exit", "atol-nan"])
def test_debug_shows_the_traceback_and_keeps_the_exit_code(
    work: Path, case: str, capfd: pytest.CaptureFixture[str]
) -> None:
    code = run_main("--debug", *_args(CASES[case][0]))
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("Error: ")


def test_cuda_asked_for_and_missing_is_refused(work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here")
    before = snapshot(work)
    for args in (
        _args(["convert", "small.pt2", "--providers", "cuda"]),
        _args(["verify", "small.pt2", "small.onnx", "--providers", "cuda"]),
        ["bench", "small.onnx", "--providers", "cuda"],
    ):
        code = run_main(*args)
        err = capfd.readouterr().err
        assert code == 2 and err.startswith("Error: --providers cuda") and err.count("\n") == 1, err
    assert snapshot(work) == before
    assert run_main(*_args(["convert", "small.pt2", "--providers", "auto"])) == 0  # auto falls back


def test_opset_asked_for_is_the_opset_written(work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert run_main(*_args(["convert", "small.pt2", "--opset", "17"])) == 0, capfd.readouterr().err
    written = onnx.load(work / "out.onnx")
    assert next(o.version for o in written.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert json.loads((work / "out.report.json").read_text())["onnx"]["opset"] == 17


def test_batch_sizes_a_static_model_cannot_take_are_reported(work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = run_main("convert", "small.pt2", "-o", "out.onnx", "--batch", "1,8", "--random-batches", "0")
    err = capfd.readouterr().err
    assert code == 0 and "latency: --batch 1,8 not timed" in err  # said under the stage it is about
    report = json.loads((work / "out.report.json").read_text())
    assert any("--batch 1,8 not timed" in w for w in report["warnings"])
    assert {row["batch"] for row in report["latency"]} == {2}
