"""``--save-inputs DIR``: the parity inputs and reference outputs as .npz, enough to reproduce a verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MODELS, run_main

DIGITS = MODELS / "digits_cnn.pt2"
FAST = ("--no-bench", "-q")


def checks(report: Path) -> dict[tuple[str, str, str], float]:
    parity = json.loads(report.read_text())["parity"]
    return {(c["reference"], c["candidate"], c["output"]): c["max_abs_err"] for c in parity["checks"]}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("saved")
    code = run_main(
        "convert", DIGITS, "-o", root / "first.onnx", "--random-batches", "1", "--save-inputs", root / "inputs", *FAST
    )
    assert code == 0
    return root


def test_the_directory_holds_one_file_pair_per_batch_and_an_index(saved: Path) -> None:
    index = json.loads((saved / "inputs" / "index.json").read_text())
    assert index["schema"] == "bnfold.inputs/1" and index["reference"] == "original fp64 (torch)"
    assert [b["source"] for b in index["batches"]] == ["example", "random seed 1"]
    assert sorted(p.name for p in (saved / "inputs").iterdir()) == [
        "index.json",
        "inputs_0.npz",
        "inputs_1.npz",
        "reference_0.npz",
        "reference_1.npz",
    ]
    report = json.loads((saved / "first.report.json").read_text())
    with np.load(saved / "inputs" / "inputs_0.npz") as arrays:
        assert list(arrays.files) == index["inputs"] == [i["name"] for i in report["model"]["inputs"]]
    with np.load(saved / "inputs" / "reference_0.npz") as arrays:
        assert list(arrays.files) == index["outputs"] and arrays[index["outputs"][0]].dtype == np.float64


def test_the_reference_is_an_independent_fp64_run(saved: Path) -> None:
    module = torch.export.load(str(DIGITS)).module().to(torch.float64)
    for k in range(2):
        with (
            np.load(saved / "inputs" / f"inputs_{k}.npz") as inputs,
            np.load(saved / "inputs" / f"reference_{k}.npz") as reference,
        ):
            with torch.no_grad():
                expected = module(*(torch.from_numpy(inputs[n]).to(torch.float64) for n in inputs.files))
            np.testing.assert_allclose(reference[reference.files[0]], expected.numpy(), rtol=1e-12, atol=1e-12)


def test_a_saved_batch_fed_back_as_data_reproduces_the_parity_numbers(saved: Path, tmp_path: Path) -> None:
    code = run_main(
        "convert",
        DIGITS,
        "-o",
        tmp_path / "again.onnx",
        "--random-batches",
        "1",
        "--data",
        saved / "inputs" / "inputs_1.npz",
        *FAST,
    )
    assert code == 0
    again = json.loads((tmp_path / "again.report.json").read_text())
    assert again["parity"]["inputs"][-1]["source"] == "data inputs_1.npz"
    assert checks(tmp_path / "again.report.json") == checks(saved / "first.report.json")  # same batches again


def test_verify_saves_them_too_and_a_rerun_replaces_the_set(saved: Path) -> None:
    folder = saved / "inputs"
    assert run_main("verify", DIGITS, saved / "first.onnx", "--random-batches", "0", "--save-inputs", folder, "-q") == 0
    assert sorted(p.name for p in folder.iterdir()) == ["index.json", "inputs_0.npz", "reference_0.npz"]
    with np.load(folder / "inputs_0.npz") as inputs:
        first = json.loads((saved / "first.report.json").read_text())
        assert list(inputs.files) == [i["name"] for i in first["model"]["inputs"]]


def test_save_inputs_is_an_output(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    assert run_main("convert", DIGITS, "-o", tmp_path / "m.onnx", "--save-inputs", afile, *FAST) == 2
    assert "--save-inputs" in capfd.readouterr().err and afile.read_text() == "x"
    assert run_main("convert", DIGITS, "-o", tmp_path / "m.onnx", "--save-inputs", tmp_path / "no" / "dir", *FAST) == 2
    assert "does not exist" in capfd.readouterr().err
    data = tmp_path / "in"
    data.mkdir()
    np.savez(data / "inputs_1.npz", x=np.zeros((2, 1, 8, 8), np.float32))
    code = run_main(
        "convert", DIGITS, "-o", tmp_path / "m.onnx", "--data", data / "inputs_1.npz", "--save-inputs", data, *FAST
    )
    assert code == 2 and "which bnfold reads" in capfd.readouterr().err
    assert not (tmp_path / "m.onnx").exists() and sorted(p.name for p in data.iterdir()) == ["inputs_1.npz"]


def test_a_failed_run_leaves_no_directory_it_created(tmp_path: Path) -> None:
    assert (
        run_main(
            "convert",
            DIGITS,
            "-o",
            tmp_path / "m.onnx",
            "--input-shape",
            "1,3,8,8",
            "--save-inputs",
            tmp_path / "new",
            *FAST,
        )
        == 2
    )
    assert not (tmp_path / "new").exists()
