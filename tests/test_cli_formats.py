"""``bnfold convert`` on the digits CNN saved in every format it reads, as a user runs it.

Each file converts with exit 0 into an ONNX model with no BatchNormalization left, all four BNs folded,
parity passed, the format detected by content, and the input file untouched. The files are written once
and converted concurrently: each conversion is a fresh process that spends most of its time importing.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from conftest import MODELS, ROOT, run_in_process
from safetensors.torch import save_file

FACTORY = "models.architectures:digits_cnn"
SHAPE = ("--input-shape", "8,1,8,8")


@dataclass(frozen=True)
class Format:
    """One way to save the model: the file name, what bnfold must detect, and the options it needs."""

    file: str
    detected: str
    options: tuple[str, ...]


FORMATS = {
    "torch.export": Format("digits.pt2", "torch.export", ()),
    "torchscript": Format("digits.torchscript.pt", "torchscript", ("--trust-code", *SHAPE)),
    "state_dict": Format("digits.state_dict.pt", "state_dict", ("--model", FACTORY, *SHAPE)),
    "safetensors": Format("digits.safetensors", "safetensors", ("--model", FACTORY, *SHAPE)),
    "checkpoint": Format("digits.ckpt", "checkpoint", ("--model", FACTORY, *SHAPE)),
    "pickle": Format("digits.pickled.pt", "pickle", ("--trust-pickle", *SHAPE)),  # the older name
    "onnx": Format("digits.unfolded.onnx", "onnx", ()),
}


@dataclass
class Outcome:
    done: subprocess.CompletedProcess[str]
    onnx_path: Path
    report: dict[str, Any] | None
    sha_before: str
    sha_after: str


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trained_digits_cnn() -> torch.nn.Module:
    """The shipped weights in a module imported as ``models.architectures`` (what the pickle refers to)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from models.architectures import digits_cnn

    model = digits_cnn()
    model.load_state_dict(torch.load(MODELS / "digits_cnn.state_dict.pt", weights_only=True))
    return model.eval()


def save_every_format(directory: Path) -> None:
    model = trained_digits_cnn()
    example = (torch.randn(8, 1, 8, 8),)
    state = model.state_dict()
    torch.export.save(torch.export.export(model, example), directory / FORMATS["torch.export"].file)
    torch.jit.save(torch.jit.trace(model, example), directory / FORMATS["torchscript"].file)
    torch.save(state, directory / FORMATS["state_dict"].file)
    save_file({k: v.contiguous() for k, v in state.items()}, directory / FORMATS["safetensors"].file)
    checkpoint = {"epoch": 12, "model_state_dict": state, "optimizer": {}}
    torch.save(checkpoint, directory / FORMATS["checkpoint"].file)
    torch.save(model, directory / FORMATS["pickle"].file)
    torch.onnx.export(
        model,
        example,
        directory / FORMATS["onnx"].file,
        dynamo=False,
        do_constant_folding=False,
        input_names=["x"],
        output_names=["logits"],
    )


def convert_one(directory: Path, name: str) -> Outcome:
    spec = FORMATS[name]
    source = directory / spec.file
    onnx_path = directory / f"out-{name}.onnx"
    before = sha256(source)
    # from the repository root, as the README says: --model and the pickle's class import from there
    done = run_in_process("convert", str(source), "-o", str(onnx_path), "--no-bench", *spec.options, cwd=ROOT)
    report_path = directory / f"out-{name}.report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return Outcome(done, onnx_path, report, before, sha256(source))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    directory = tmp_path_factory.mktemp("formats")
    save_every_format(directory)
    return {name: convert_one(directory, name) for name in FORMATS}


def test_the_unfolded_onnx_input_has_batchnorm_nodes(outcomes: dict[str, Outcome]) -> None:
    source = outcomes["onnx"].onnx_path.parent / FORMATS["onnx"].file
    assert sum(n.op_type == "BatchNormalization" for n in onnx.load(str(source)).graph.node) == 4


@pytest.mark.parametrize("name", list(FORMATS))
def test_convert_folds_every_batchnorm(outcomes: dict[str, Outcome], name: str) -> None:
    outcome = outcomes[name]
    assert outcome.done.returncode == 0, outcome.done.stderr
    assert "Traceback" not in outcome.done.stderr
    model = onnx.load(str(outcome.onnx_path))
    onnx.checker.check_model(model)
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    report = outcome.report
    assert report is not None
    assert report["fold"]["batchnorm_found"] == 4 == report["fold"]["batchnorm_folded"]
    assert report["onnx"]["batchnorm_nodes"] == 0
    assert report["parity"]["passed"] is True and report["verdict"]["passed"] is True


@pytest.mark.parametrize("name", list(FORMATS))
def test_format_is_detected_by_content(outcomes: dict[str, Outcome], name: str) -> None:
    report = outcomes[name].report
    assert report is not None, outcomes[name].done.stderr
    assert report["model"]["format"] == FORMATS[name].detected
    assert report["model"]["sha256"] == outcomes[name].sha_before


@pytest.mark.parametrize("name", list(FORMATS))
def test_input_file_is_unchanged(outcomes: dict[str, Outcome], name: str) -> None:
    assert outcomes[name].sha_after == outcomes[name].sha_before


def test_trusted_pickle_says_what_it_ran(outcomes: dict[str, Outcome]) -> None:
    report = outcomes["pickle"].report
    assert report is not None
    notes = " ".join(report["model"]["notes"])
    assert "trusted" in notes and "models.architectures.DigitsCNN" in notes


def test_checkpoint_names_the_key_it_used(outcomes: dict[str, Outcome]) -> None:
    report = outcomes["checkpoint"].report
    assert report is not None
    assert "weights taken from checkpoint key 'model_state_dict'" in report["model"]["notes"]
