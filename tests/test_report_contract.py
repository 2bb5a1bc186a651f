"""The JSON contract ``bnfold.report/1`` is what the typed report writes: reports made by ``convert``,
``bnfold verify`` and ``bnfold bench`` read back into a :class:`~bnfold.report.Report` and write the same
text again, with the keys the README documents."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import MODELS, ROOT, run_in_process

import bnfold
from bnfold.report import Report
from bnfold.report.check import load_report


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> bnfold.ConvertResult:
    """A conversion of a shipped model with every section filled: latency timed at two batch sizes."""
    out = tmp_path_factory.mktemp("contract") / "digits.onnx"
    config = bnfold.ConvertConfig(output=out, batches=(1, 4), random_batches=1)
    return bnfold.convert(MODELS / "digits_cnn.pt2", config)


def documented_keys() -> dict[str, set[str]]:
    """The keys README's report table names, by where they sit: ``""`` the top level, ``"parity.checks[]"``
    a parity check, and so on."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## The report (`bnfold.report/1`)")[1].split("### The parity rule")[0]
    keys: dict[str, set[str]] = {}
    for row in [line for line in table.splitlines() if line.startswith("| `")]:
        cells = row.split(" | ")
        where = [name.strip("`").removesuffix("[]") for name in re.findall(r"`[a-z_.0-9\[\]]+`", cells[0])]
        for name in where:
            section, _, key = name.rpartition(".")
            keys.setdefault(section, set()).add(key)
            if section:
                keys[""].add(section.split(".")[0])
        if len(where) == 1 and where[0] in ENTRIES:
            described = re.findall(r"`([a-z_0-9]+)(?:\[\])?`", cells[1])
            keys.setdefault(where[0] + "[]", set()).update(k for k in described if k not in VALUES)
    return keys


ENTRIES = ("fold.layers", "parity.checks", "latency", "speedup", "model.inputs")
VALUES = {"folded", "affine", "kept", "forward", "backward", "branches", "concat", "identity", "removed", "original",
          "faster", "slower", "unchanged", "edges", "counts", "zeros", "below", "above", "nan", "total",
          "batchnorm", "muladd", "all", "baseline"}  # fmt: skip
UNDOCUMENTED: dict[str, set[str]] = {}
"""Keys a report writes beside the documented ones (none: every key is in README's table)."""


def assert_round_trip(text: str) -> Report:
    report = Report.from_json(text)
    assert report.to_json() == text
    assert Report.from_json(report.to_json()) == report
    return report


def assert_keys(rows: list[dict[str, Any]], where: str) -> None:
    """Each of ``rows`` has exactly the keys README documents at ``where`` (and those always written besides)."""
    expected = documented_keys()[where] | UNDOCUMENTED.get(where, set())
    assert rows and all(set(row) == expected for row in rows), (where, set(rows[0]) ^ expected)


def assert_documented(data: dict[str, Any]) -> None:
    """The sections every report fills have the documented keys (a verify report has no fold and a smaller
    onnx section)."""
    assert_keys([data], "")
    for section in ("model", "parity", "verdict"):
        assert_keys([data[section]], section)
    assert_keys(data["parity"]["checks"], "parity.checks[]")
    assert_keys(data["model"]["inputs"], "model.inputs[]")


def test_a_conversion_report_round_trips_and_has_every_documented_key(converted: bnfold.ConvertResult) -> None:
    assert converted.report_path is not None
    text = converted.report_path.read_text(encoding="utf-8")
    report = assert_round_trip(text)
    assert report == converted.report
    data = json.loads(text)
    assert_documented(data)
    assert_keys([data["fold"]], "fold")
    assert_keys([data["onnx"]], "onnx")
    assert_keys(data["fold"]["layers"], "fold.layers[]")
    assert_keys(data["latency"], "latency[]")
    assert_keys(data["speedup"], "speedup[]")
    assert {row["batch"] for row in data["latency"]} == {1, 4}


def test_the_conversion_result_is_the_report_written(converted: bnfold.ConvertResult) -> None:
    report = converted.report
    assert converted.passed is report.verdict.passed is True
    assert report.fold is not None and report.fold.batchnorm_found == len(converted.records)
    assert report.parity is not None and report.parity.checks[0].describe().startswith("ok")
    assert report.to_dict() == json.loads(converted.report_path.read_text(encoding="utf-8"))  # type: ignore[union-attr]
    assert report["verdict"]["passed"] is True and report["parity"]["checks"][0]["stage"] == "baseline"
    assert load_report(converted.report_path) == report  # type: ignore[arg-type]


def test_a_verify_report_round_trips(converted: bnfold.ConvertResult, tmp_path: Path) -> None:
    from bnfold.verify.pair import verify_and_report

    path = tmp_path / "verify.report.json"
    config = bnfold.ConvertConfig(random_batches=0)
    report = verify_and_report(MODELS / "digits_cnn.pt2", converted.onnx_path, config, path)
    text = path.read_text(encoding="utf-8")
    assert assert_round_trip(text) == report
    data = json.loads(text)
    assert_documented(data)
    assert data["fold"] == {} and report.fold is None
    assert list(data["onnx"]) == ["path", "sha256", "format", "batchnorm_nodes", "nodes", "opset", "size_bytes"]


def test_a_bench_report_round_trips(converted: bnfold.ConvertResult) -> None:
    """``bnfold bench --json`` writes the latency and speedup entries of a report: they read into its types
    and write back the same, as a report holding nothing else does; the text output reads the same entries."""
    onnx = str(converted.onnx_path)
    done = run_in_process("bench", onnx, onnx, "--batch", "1,2", "--json")
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    latency, speedup = written["latency"], written["speedup"]
    report = Report.from_dict({"schema": "bnfold.report/1", **written})
    assert report.latency[0].p50_ms == latency[0]["p50_ms"] and report.speedup[0].verdict == speedup[0]["verdict"]
    data = report.to_dict()
    assert data["latency"] == latency and data["speedup"] == speedup
    assert assert_round_trip(report.to_json()) == report
    assert_keys(latency, "latency[]")
    assert_keys(speedup, "speedup[]")
    text = run_in_process("bench", onnx, onnx, "--batch", "2").stdout.splitlines()
    assert [line.split()[0] for line in text] == ["original", "folded", "speedup"] and "batch 2: p50 " in text[0]
    assert re.fullmatch(r"speedup batch 2: x\d+\.\d\d \(IQR \d+\.\d\d-\d+\.\d\d\)", text[2])
    api_latency, api_speedup = bnfold.bench([converted.onnx_path])
    assert set(api_latency[0]) == set(latency[0]) and api_latency[0]["model"] == "digits" and api_speedup == []
