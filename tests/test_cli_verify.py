"""``bnfold verify``, ``bnfold bench`` and ``bnfold inspect`` as a user runs them, on the shipped digits CNN."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import MODELS, ROOT, run_cli
from onnx import numpy_helper

import bnfold

DIGITS = MODELS / "digits_cnn.pt2"


@pytest.fixture(scope="module")
def folded_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "digits.onnx"
    result = bnfold.convert(DIGITS, bnfold.ConvertConfig(output=out, bench=False, write_reports=False))
    assert result.passed
    return out


def _perturb_largest_weight(source: Path, target: Path) -> None:
    model = onnx.load(str(source))
    weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(target))


def test_verify_passes_on_the_folded_model_and_writes_a_checkable_report(folded_onnx: Path, tmp_path: Path) -> None:
    report = tmp_path / "verify.report.json"
    done = run_cli("verify", str(DIGITS), str(folded_onnx), "--report", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(report.read_text())
    assert data["parity"]["passed"] and data["onnx"]["batchnorm_nodes"] == 0
    assert data["fold"] == {} and data["onnx"]["format"] == "onnx"  # as README describes a verify report
    checked = run_cli("check", str(report), "--require-no-batchnorm")
    assert checked.returncode == 0 and "ok: parity passed" in checked.stdout
    assert "BatchNorms folded" not in checked.stdout  # nothing was folded: no 0/0 count


def test_verify_names_the_export_stage_for_a_perturbed_onnx_weight(folded_onnx: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    _perturb_largest_weight(folded_onnx, broken)
    report = tmp_path / "broken.report.json"
    done = run_cli("verify", str(DIGITS), str(broken), "--report", str(report))
    assert done.returncode == 1
    assert "stage export" in done.stdout
    assert json.loads(report.read_text())["parity"]["failed_stage"] == "export"
    assert run_cli("check", str(report)).returncode == 1


def test_verify_names_the_fold_stage_for_a_broken_folded_pytorch_model(tmp_path: Path) -> None:
    program = torch.export.load(str(DIGITS))
    inputs = program.example_inputs[0]
    folded = bnfold.fold(program).module
    name, weight = next((n, p) for n, p in folded.named_parameters() if p.dim() == 4)
    with torch.no_grad():
        weight[0] += 0.5
    broken = tmp_path / "broken_folded.pt2"
    torch.export.save(torch.export.export(folded, inputs), str(broken))
    done = run_cli("verify", str(DIGITS), str(broken))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "stage fold" in done.stdout, name


def test_bench_compares_two_onnx_files_interleaved(folded_onnx: Path) -> None:
    done = run_cli("bench", str(folded_onnx), str(folded_onnx), "--batch", "1,4", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert {(r["model"], r["batch"]) for r in data["latency"]} == {
        ("original", 1),
        ("folded", 1),
        ("original", 4),
        ("folded", 4),
    }
    assert {s["batch"] for s in data["speedup"]} == {1, 4}


def test_bench_refuses_a_pytorch_file() -> None:
    done = run_cli("bench", str(DIGITS))
    assert done.returncode == 2 and done.stderr.startswith("Error: ") and "bnfold convert" in done.stderr


def test_inspect_prints_each_batchnorm_and_its_fate() -> None:
    done = run_cli("inspect", str(DIGITS))
    assert done.returncode == 0, done.stderr
    assert "stem.1 → folded into stem.0 (forward)" in done.stdout
    records = json.loads(run_cli("inspect", str(DIGITS), "--json").stdout)
    assert [r["action"] for r in records] == ["folded"] * 4


def test_public_api_names_are_the_functions() -> None:
    import bnfold.fold.maths  # importing a submodule must not shadow bnfold.fold, the function

    assert callable(bnfold.fold) and callable(bnfold.convert) and callable(bnfold.inspect_model)


def two_outputs(path: Path, scales: dict[str, float], order: list[str]) -> Path:
    """An ONNX model with outputs ``p`` and ``q`` (``x`` times their scale), listed in ``order``."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Mul", ["x", f"{name}_scale"], [name]) for name in scales]
    inits = [numpy_helper.from_array(np.array(s, np.float32), f"{name}_scale") for name, s in scales.items()]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4]) for name in order],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize(
    ("scales", "order", "passes"),
    [
        ({"p": 2.0, "q": 3.0}, ["q", "p"], True),  # the same outputs, listed in another order
        ({"p": 3.0, "q": 2.0}, ["q", "p"], False),  # position by position the same values, under swapped names
    ],
)
def test_two_onnx_models_outputs_are_compared_by_name(
    tmp_path: Path, scales: dict[str, float], order: list[str], passes: bool
) -> None:
    """Code reads an output by its name: the candidate's ``p`` must be the original's ``p``, wherever the
    graph lists it."""
    original = two_outputs(tmp_path / "original.onnx", {"p": 2.0, "q": 3.0}, ["p", "q"])
    candidate = two_outputs(tmp_path / "candidate.onnx", scales, order)
    report = bnfold.verify(original, candidate, bnfold.ConvertConfig(input_shapes=((2, 4),)))
    assert report.verdict.passed is passes, report.verdict.reason
    assert {c.output for c in report.parity.checks} == {"p", "q"}
    if not passes:  # every output against the original's, in both sessions of the candidate
        against = [c for c in report.parity.checks if c.reference.startswith("original")]
        assert len(against) == 4 and not any(c.passed for c in against)


def scaled(path: Path, inputs: dict[str, list[int | str]]) -> Path:
    """An ONNX model summing its inputs (``inputs``: name -> shape) times 2."""
    from onnx import TensorProto, helper

    names = list(inputs)
    nodes = [helper.make_node("Sum", names, ["s"]), helper.make_node("Mul", ["s", "two"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"x": ["N", 4], "z": ["N", 4]}, "b.onnx takes 2 input(s) of rank 2, 2: bnfold bench compares two versions"),
        ({"x": [3, 4]}, "timed at batch 1 (the example's): b.onnx has a fixed batch of 3; give --batch 3"),
    ],
)
def test_bench_refuses_two_models_it_cannot_feed_alike_in_one_line(
    tmp_path: Path, second: dict[str, list[int | str]], message: str
) -> None:
    scaled(tmp_path / "a.onnx", {"x": ["N", 4]})
    scaled(tmp_path / "b.onnx", second)
    done = run_cli("bench", "a.onnx", "b.onnx", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("Error: ") and message in done.stderr


def test_verify_refuses_a_tolerance_for_an_output_two_pytorch_models_do_not_have() -> None:
    """Two PyTorch models name their outputs by index: ``--tolerance nope=...`` would be ignored without a word."""
    factory = ["--model", "models.architectures:digits_cnn"]
    args = ["verify", str(DIGITS), "models/digits_cnn.state_dict.pt", *factory, "-q"]
    done = run_cli(*args, "--tolerance", "nope=1,1", cwd=ROOT)
    assert done.returncode == 2 and done.stderr == (
        "Error: --tolerance nope=...: the model has no output 'nope'; its outputs are 0 = '0'\n"
    )
    assert run_cli(*args, "--tolerance", "0=0,0", cwd=ROOT).returncode == 1  # by index it applies: fp32 misses 0


def test_verify_refuses_a_candidate_the_inputs_do_not_fit_as_bad_input(tmp_path: Path) -> None:
    """A candidate fixed at batch 3 cannot run the example's batch: that is bad input (exit 2, what to give), not
    a candidate failing parity; given inputs that fit, the same pair passes."""
    scaled(tmp_path / "a.onnx", {"x": ["N", 4]})
    scaled(tmp_path / "b.onnx", {"x": [3, 4]})
    done = run_cli("verify", "a.onnx", "b.onnx", "-q", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr == (
        "Error: the candidate (b.onnx) takes input 0 of shape 3x4; the example batch is 1x4: give --input-shape "
        "3,4, or a model that takes the same inputs\n"
    )
    assert run_cli("verify", "a.onnx", "b.onnx", "-q", "--input-shape", "3,4", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("candidate", ["tabular_mlp.pt2", "tabular_mlp.onnx"])
def test_verify_refuses_two_models_no_input_fits_as_bad_input(tmp_path: Path, candidate: str) -> None:
    """The digits CNN against the tabular MLP (a torch.export archive, or its ONNX export): the archive declares
    its inputs as an ONNX file does, so no batch fitting both is bad input, not a candidate failing parity
    (which printed a 100 % top-1 agreement for a candidate that never ran)."""
    shutil.copy(MODELS / "tabular_mlp.pt2", tmp_path)
    if candidate.endswith(".onnx"):
        assert run_cli("convert", "tabular_mlp.pt2", "-q", "--no-bench", cwd=tmp_path).returncode == 0
    done = run_cli("verify", str(DIGITS), candidate, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.startswith("Error: the original (") and done.stderr.count("\n") == 1
    assert "?x1x8x8, the candidate (" in done.stderr and "?x30 (? dynamic): no input fits both" in done.stderr
