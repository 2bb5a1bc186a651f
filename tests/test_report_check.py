"""bnfold check: verdicts and one-line reasons per report, and refusing files that are not reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from test_report_sample import failing_report, sample_report

from bnfold.errors import ConfigError, ReportError
from bnfold.report.check import check_reports, headline


def write(tmp_path: Path, report: Any, name: str = "model.report.json") -> Path:
    path = tmp_path / name
    path.write_text(report if isinstance(report, str) else json.dumps(report))
    return path


def test_a_good_report_passes_with_its_figures(tmp_path: Path) -> None:
    verdict = check_reports([write(tmp_path, sample_report())])
    assert verdict
    (result,) = verdict.results
    expected = "ok: 3/4 BatchNorms folded, parity passed (max abs err 2.6e-06), speedup 1.25-1.32x"
    assert result.reason == expected
    assert verdict.line().startswith("PASS ") and verdict.line().endswith(result.reason)


def test_failed_parity_names_stage_candidate_and_error(tmp_path: Path) -> None:
    (result,) = check_reports([write(tmp_path, failing_report())]).results
    assert not result
    assert result.reason == (
        "parity failed at stage export: onnxruntime CPU (optimizations off) output logits "
        "max_abs_err 3.2e-01 > tolerance (atol 1.0e-04, rtol 1.0e-03)"
    )


def test_failed_parity_with_nan_or_a_run_error(tmp_path: Path) -> None:
    report = failing_report()
    report["parity"]["checks"][3].update(max_abs_err=None, nan_count=7)
    assert "has 7 NaN values" in check_reports([write(tmp_path, report)]).results[0].reason
    report["parity"]["checks"][3].update(error="could not run: RuntimeError: boom")
    assert "could not run: RuntimeError: boom" in check_reports([write(tmp_path, report)]).results[0].reason


def test_remaining_batchnorm_nodes_fail_only_when_required(tmp_path: Path) -> None:
    report = sample_report()
    report["onnx"]["batchnorm_nodes"] = 2
    path = write(tmp_path, report)
    assert check_reports([path])
    (result,) = check_reports([path], require_no_batchnorm=True).results
    assert not result and result.reason == "2 BatchNormalization nodes remain in digits_cnn.onnx"


def test_max_abs_err_threshold(tmp_path: Path) -> None:
    path = write(tmp_path, sample_report())
    assert check_reports([path], max_abs_err=1e-5)
    (result,) = check_reports([path], max_abs_err=1e-6).results
    assert result.reason == (
        "max abs err 2.6e-06 > allowed 1.0e-06 (onnxruntime CPU (optimizations all) output logits)"
    )


@pytest.mark.parametrize("option", ["max-abs-err", "min-speedup"])
@pytest.mark.parametrize("value", ["nan", "-1", "inf"])
def test_a_threshold_that_is_not_a_finite_number_is_refused(tmp_path: Path, option: str, value: str) -> None:
    """NaN compares false with everything: as a threshold it would pass every report."""
    path = write(tmp_path, failing_report())
    with pytest.raises(ConfigError, match=f"--{option} {value}"):
        check_reports([path], **{option.replace("-", "_"): float(value)})


def test_a_nan_threshold_is_bad_input_on_the_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, failing_report())
    done = run_cli("check", str(path), "--max-abs-err", "nan")
    assert done.returncode == 2 and done.stderr == "Error: --max-abs-err nan: a threshold is a finite number >= 0\n"
    assert run_cli("check", str(path), "--max-abs-err", "1").returncode == 1  # judged with a finite one


def test_min_speedup_uses_the_slowest_onnxruntime_result(tmp_path: Path) -> None:
    path = write(tmp_path, sample_report())
    assert check_reports([path], min_speedup=1.2)
    (result,) = check_reports([path], min_speedup=1.3).results
    assert result.reason == "speedup 1.25x < required 1.30x (onnxruntime CPUExecutionProvider batch 64)"


def test_min_speedup_without_latency_fails_with_a_reason(tmp_path: Path) -> None:
    report = sample_report()
    report["latency"], report["speedup"] = [], []
    (result,) = check_reports([write(tmp_path, report)], min_speedup=1.05).results
    assert not result and "no speedup in the report" in result.reason
    assert check_reports([write(tmp_path, report)]).results[0].reason.endswith("(max abs err 2.6e-06)")


def test_every_failed_requirement_is_named(tmp_path: Path) -> None:
    report = sample_report()
    report["onnx"]["batchnorm_nodes"] = 1
    (result,) = check_reports([write(tmp_path, report)], 1e-7, True, 2.0).results
    assert result.reason.count("; ") == 2 and "1 BatchNormalization node remains" in result.reason


def test_a_failed_verdict_fails_even_with_parity_passed(tmp_path: Path) -> None:
    report = sample_report()
    report["verdict"] = {"passed": False, "reason": "export produced 3 warnings treated as errors"}
    (result,) = check_reports([write(tmp_path, report)]).results
    assert not result and result.reason == "export produced 3 warnings treated as errors"


def test_table_of_many_reports(tmp_path: Path) -> None:
    paths = [write(tmp_path, sample_report(), "a.json"), write(tmp_path, failing_report(), "bb.json")]
    verdict = check_reports(paths)
    assert not verdict
    lines = verdict.table().splitlines()
    assert len(lines) == 5 and lines[-1] == "1/2 reports pass"
    assert "PASS" in lines[2] and "FAIL" in lines[3] and "stage export" in lines[3]
    assert verdict.to_json()[1]["passed"] is False


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json at all", "not a bnfold report (not JSON"),
        ("[1, 2]", 'no "schema" key'),
        ('{"fold": {}}', 'no "schema" key'),
        ('{"schema": "other.tool/1"}', 'schema "other.tool/1"'),
        ('{"schema": "bnfold.report/2"}', 'report schema "bnfold.report/2" is not readable by this bnfold'),
        ('{"schema": "bnfold.report/1"}', "incomplete bnfold report (no fold, onnx, parity, verdict"),
    ],
)
def test_a_file_that_is_not_a_report_is_a_report_error(tmp_path: Path, content: str, message: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ReportError, match="^" + str(path).replace(".", r"\.") + ": ") as info:
        check_reports([path])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_missing_file_is_a_report_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="cannot read the report"):
        check_reports([tmp_path / "absent.json"])


def test_a_newer_minor_version_is_read() -> None:
    report = sample_report()
    report["schema"] = "bnfold.report/1.3"
    from bnfold.report.check import check_report, validate_report

    validate_report(report)  # raises for a schema this version cannot read
    assert check_report(report, "newer.json").passed


def test_headline_prefers_onnxruntime_speedups() -> None:
    head = headline(sample_report())
    assert (head.speedup_min, head.speedup_max) == (1.25, 1.3158)
    assert head.baseline_max_abs_err == 2.0e-6 and head.batchnorm_nodes == 0


def test_max_abs_err_judges_what_bnfold_made_not_the_fp32_original(tmp_path: Path) -> None:
    """The untouched fp32 original's own error against fp64 is scale, not a result: a large one does not fail
    a threshold that every folded and exported candidate meets; every rendering shows the same number."""
    from bnfold.report import render_all
    from bnfold.report.summary import summary_lines

    report = sample_report()
    baseline = next(c for c in report["parity"]["checks"] if c["stage"] == "baseline")
    baseline["max_abs_err"] = 5.0e-2
    worst = max(c["max_abs_err"] for c in report["parity"]["checks"] if c["stage"] != "baseline")
    assert worst < 1e-5
    assert check_reports([write(tmp_path, report)], max_abs_err=1e-5)  # 5e-2 is the original's, not bnfold's
    head = headline(report)
    assert head.max_abs_err == worst and head.baseline_max_abs_err == 5.0e-2
    texts = render_all(report)
    shown = f"{worst:.1e}"
    assert shown in texts["md"] and shown in texts["html"]
    assert f"{worst:.2e}" in "\n".join(summary_lines(report))


@pytest.mark.parametrize("passed", [True, False])
def test_a_parity_verdict_its_checks_contradict_is_a_report_error(tmp_path: Path, passed: bool) -> None:
    """An edited report whose ``parity.passed`` disagrees with its checks cannot be judged either way."""
    report = sample_report() if passed else failing_report()
    assert bool(check_reports([write(tmp_path, report)])) is passed  # control: as written, it is judged
    for check in report["parity"]["checks"]:
        check["passed"] = not passed
    with pytest.raises(ReportError, match="inconsistent bnfold report: parity.passed says"):
        check_reports([write(tmp_path, report)])
