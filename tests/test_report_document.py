"""The typed report reads the JSON contract and writes it back: sections, records, and what it does not know."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from test_report_sample import failing_report, sample_report

from bnfold.bench import LatencyResult
from bnfold.errors import ReportError
from bnfold.fold.records import BnRecord
from bnfold.report import Report, render_all
from bnfold.report.check import check_report
from bnfold.verify import ParityCheck


def complete(report: dict[str, Any]) -> dict[str, Any]:
    """The sample with every key a report of this version writes (the sample leaves a few out)."""
    report = copy.deepcopy(report)
    report["model"]["inputs"][0]["dynamic_axes"] = [0]
    fold = report["fold"]
    fold["affine_form"] = "batchnorm"
    fold["seconds"], fold["layers"] = fold.pop("seconds"), fold.pop("layers")
    report["onnx"].update(external_data=None, external_data_sha256=None, optimized_path=None)
    report["onnx"] = {key: report["onnx"][key] for key in ONNX_KEYS}
    report["parity"]["notes"] = ["CUDA not requested"]
    for check in report["parity"]["checks"]:
        check["noise_bound"] = None
        check["error_histogram"] = check.pop("error_histogram")
    for entry in report["latency"]:
        entry.update({key: round(value, 6) for key, value in entry.items() if key.endswith("_ms") and value})
        entry["throughput"] = round(entry["throughput"], 3)
    for item in report["speedup"]:
        item["verdict"] = "faster"
    report["verdict"]["max_abs_err"] = 2.6e-6
    return report


ONNX_KEYS = [
    "path", "external_data", "exporter", "opset", "batchnorm_nodes", "nodes", "size_bytes", "sha256",
    "external_data_sha256", "optimized_path",
]  # fmt: skip


def test_a_complete_report_reads_into_its_types_and_writes_back_unchanged() -> None:
    data = complete(sample_report())
    report = Report.from_dict(data)
    assert isinstance(report.parity.checks[0], ParityCheck) and isinstance(report.fold.layers[0], BnRecord)
    assert isinstance(report.latency[0], LatencyResult) and report.speedup[0].verdict == "faster"
    assert report.fold.kept_as_is == 0 and report.parity.cuda.available is False
    assert report.model.inputs[0].dynamic_axes == [0]
    text = json.dumps(data, indent=2) + "\n"
    assert report.to_dict() == data and report.to_json() == text
    assert Report.from_json(text) == report


def test_keys_of_a_newer_minor_version_are_kept() -> None:
    data = complete(sample_report())
    data["schema"] = "bnfold.report/1.3"
    data["onnx"]["passes"] = ["fuse-gelu"]
    data["parity"]["checks"][0]["new_metric"] = 0.5
    data["lineage"] = {"parent": "abc"}
    report = Report.read(data, "newer.json")
    assert report.onnx.extra == {"passes": ["fuse-gelu"]} and report.extra == {"lineage": {"parent": "abc"}}
    written = report.to_dict()
    assert written["onnx"]["passes"] == ["fuse-gelu"] and written["lineage"] == {"parent": "abc"}
    assert "new_metric" not in written["parity"]["checks"][0]  # a check is a ParityCheck: its own keys
    assert check_report(report, "newer.json").passed


def test_keys_an_older_report_left_out_take_their_defaults() -> None:
    data = sample_report()
    del data["speedup"], data["latency"], data["environment"], data["model"]
    for check in data["parity"]["checks"]:
        del check["error_histogram"], check["worst_batch"]
    report = Report.read(data, "old.json")
    assert report.speedup == [] and report.model.path is None and report.verdict.max_abs_err is None
    assert report.parity.checks[0].error_histogram is None and report.fold.affine_form is None
    assert check_report(report).passed
    assert "speedup" not in render_all(report)["md"]


def test_a_verify_report_keeps_its_empty_fold_and_its_candidate_section() -> None:
    data = complete(failing_report())
    data.update(fold={}, latency=[], speedup=[])
    data["onnx"] = {"path": "m.onnx", "sha256": "ef" * 32, "format": "onnx", "batchnorm_nodes": 0, "nodes": 21,
                    "opset": 18, "size_bytes": 1234}  # fmt: skip
    report = Report.from_dict(data)
    assert report.fold is None and report.onnx.format == "onnx"
    assert report.to_dict() == data and list(report.to_dict()["onnx"]) == list(data["onnx"])
    torch_candidate = {"path": "m.pt2", "sha256": "ef" * 32, "format": "torch.export"}
    assert Report.from_dict({**data, "onnx": torch_candidate}).to_dict()["onnx"] == torch_candidate


@pytest.mark.parametrize(
    ("section", "value"),
    [("parity", {"passed": False, "checks": "abc"}), ("fold", {"layers": 3}), ("latency", {"p50_ms": 1})],
)
def test_a_section_of_the_wrong_type_is_a_report_error(section: str, value: Any) -> None:
    data = sample_report()
    data[section] = value
    with pytest.raises(ReportError, match=r"^bad\.json: malformed bnfold report, a field has the wrong type"):
        Report.read(data, "bad.json")


def test_the_report_still_reads_as_the_dict_it_was() -> None:
    data = complete(sample_report())
    report = Report.from_dict(data)
    assert report["verdict"]["passed"] is True and report["parity"]["checks"][1]["stage"] == "fold"
    assert "warnings" in report and report.get("absent") is None and dict(report) == data
    report["warnings"].append("not kept")  # a copy: the object is changed through its attributes
    assert report.warnings == data["warnings"]


def test_a_failing_baseline_check_still_draws_the_fp32_noise_row() -> None:
    """A ParityCheck is falsy when it fails: the renderers must not drop the original fp32 model's check
    (the baseline, failing when the tolerance is tighter than fp32 noise) for being falsy."""
    data = failing_report()
    data["parity"]["checks"][0]["passed"] = False
    texts = render_all(data)
    assert "original fp32 (fp32 noise)" in texts["html"]
    assert "original fp32 " in texts["md"].split("Share of elements")[1]


def test_a_summary_reads_into_its_rows_and_a_malformed_one_is_a_report_error(tmp_path: Path) -> None:
    from bnfold.report.aggregate import Summary, SummaryRow
    from bnfold.report.check import check_reports

    (tmp_path / "a.report.json").write_text(json.dumps(sample_report()))
    rows = [SummaryRow("m/a.pt2", "passed", 0, "", "a.onnx", "a.report.json", 1.5), SummaryRow("m/b.pt2", reason="bad")]
    data = Summary(jobs=2, passed=False, counts={"passed": 1, "failed": 0, "error": 1}, models=rows).to_dict()
    assert Summary.from_dict(json.loads(json.dumps(data))).to_dict() == data
    (tmp_path / "summary.json").write_text(json.dumps(data))
    verdict = check_reports([tmp_path / "summary.json"])
    assert [r.passed for r in verdict.results] == [True, False] and verdict.results[1].reason == "bad"
    (tmp_path / "summary.json").write_text(json.dumps({**data, "models": [["not", "a", "row"]]}))
    with pytest.raises(ReportError, match="summary.json: malformed bnfold summary, a field has the wrong type"):
        check_reports([tmp_path / "summary.json"])
