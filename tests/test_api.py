"""The Python API mirrors the command line: bnfold.fold, convert, verify, bench and check, typed."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from conftest import MODELS
from torch import nn

import bnfold
from bnfold.errors import BnfoldError, LoadError


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> bnfold.ConvertResult:
    out = tmp_path_factory.mktemp("api") / "digits.onnx"
    return bnfold.convert(MODELS / "digits_cnn.pt2", bnfold.ConvertConfig(output=out, bench=False))


def test_stage_functions_do_not_hide_their_subpackages() -> None:
    for stage in ("fold", "verify", "bench"):
        assert callable(getattr(bnfold, stage))
    maths = importlib.import_module("bnfold.fold.maths")
    assert bnfold.fold.maths is maths  # the subpackage is still reachable through the callable name
    assert bnfold.verify.Tolerance is importlib.import_module("bnfold.verify.tolerance").Tolerance
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval()
    result = bnfold.fold(model, (torch.randn(2, 1, 5, 5),))
    assert result.counts["folded"] == 1


def test_verify_matches_the_cli(converted: bnfold.ConvertResult) -> None:
    report = bnfold.verify(MODELS / "digits_cnn.pt2", converted.onnx_path)
    assert report["verdict"]["passed"] and report["schema"] == "bnfold.report/1"
    stages = {c["stage"] for c in report["parity"]["checks"]}
    assert {"export", "ort-optimization"} <= stages


def test_bench_times_onnx_only(converted: bnfold.ConvertResult) -> None:
    latency, speedup = bnfold.bench([converted.onnx_path, converted.onnx_path])
    assert {row["model"] for row in latency} == {"original", "folded"} and len(speedup) == 1
    with pytest.raises(BnfoldError, match="bnfold bench times ONNX files"):
        bnfold.bench([MODELS / "digits_cnn.pt2"])


def test_check_judges_reports(converted: bnfold.ConvertResult, tmp_path: Path) -> None:
    assert bnfold.check([converted.report_path])
    assert not bnfold.check([converted.report_path], max_abs_err=0.0)
    not_a_report = tmp_path / "x.json"
    not_a_report.write_text("{}")
    with pytest.raises(BnfoldError):
        bnfold.check([not_a_report])


def test_the_package_is_typed() -> None:
    assert (Path(bnfold.__file__).parent / "py.typed").is_file()


def test_load_errors_are_the_user_error_family(tmp_path: Path) -> None:
    with pytest.raises(LoadError):
        bnfold.load_model(tmp_path / "missing.pt2")
