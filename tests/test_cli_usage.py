"""Usage errors (an unknown option, a bad choice, a value out of range) are one ``Error:`` line and exit 2."""

from __future__ import annotations

import pytest
from conftest import MODELS, run_main

DIGITS = str(MODELS / "digits_cnn.pt2")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["convert", DIGITS, "--frobnicate"], "No such option '--frobnicate'; see 'bnfold convert --help'"),
        (
            ["convert", DIGITS, "--affine-form", "fused"],
            "Invalid value for '--affine-form': 'fused' is not one of 'batchnorm', 'muladd'; "
            "see 'bnfold convert --help'",
        ),
        (
            ["convert", DIGITS, "--opset", "99"],
            "Invalid value for '--opset': 99 is not in the range 7<=x<=30; see 'bnfold convert --help'",
        ),
        (["verify", DIGITS, "x.onnx", "--random-batches", "-1"], "'--random-batches': -1 is not in the range"),
        (["convert", DIGITS, "--jobs"], "Option '--jobs' requires an argument; see 'bnfold convert --help'"),
        (["verify", DIGITS], "Missing argument 'CANDIDATE'; see 'bnfold verify --help'"),
        (["frobnicate"], "No such command 'frobnicate'; see 'bnfold --help'"),
        (
            ["convert", DIGITS, DIGITS, "--output-dir", "/nonexistent", "--save-inputs", "saved"],
            "--save-inputs and --output-dir both say where outputs go: with several models use --output-dir",
        ),
        (
            ["convert", DIGITS, "--output-dir", ".", "-o", "x.onnx"],
            "-o and --output-dir both say where outputs go: give one or the other",
        ),
        (["bench", "a.onnx", "b.onnx", "c.onnx"], "give one ONNX model, or two to compare (original first); see"),
    ],
)
def test_a_usage_error_is_one_line(args: list[str], expected: str, capfd: pytest.CaptureFixture[str]) -> None:
    assert run_main(*args) == 2
    out, err = capfd.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("Error: ") and expected in err, err
    assert "Usage:" not in err


def test_bnfold_alone_still_shows_the_help(capfd: pytest.CaptureFixture[str]) -> None:
    assert run_main() == 2
    assert "Commands:" in capfd.readouterr().err
