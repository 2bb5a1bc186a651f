"""Many models in one call: one process per model, a bad file fails alone, an aggregate worst first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import MODELS, run_cli

from bnfold.convert.many import ModelRun, exit_code, plan
from bnfold.errors import OutputError, ReportError
from bnfold.report.check import check_reports


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """The shipped models and a damaged one, converted two at a time."""
    root = tmp_path_factory.mktemp("zoo")
    for name in ("digits_cnn.pt2", "tabular_mlp.pt2"):
        shutil.copy(MODELS / name, root / name)
    (root / "damaged.pt2").write_bytes((MODELS / "digits_cnn.pt2").read_bytes()[:5000])  # a cut download
    (root / "out").mkdir()
    done = run_cli("convert", "digits_cnn.pt2", "tabular_mlp.pt2", "damaged.pt2", "--output-dir", "out",
                   "--jobs", "2", "--no-bench", cwd=root)  # fmt: skip
    return root, done


def test_each_model_gets_its_outputs_and_the_damaged_one_fails_alone(zoo: tuple[Path, object]) -> None:
    root, done = zoo
    assert done.returncode == 2, done.stderr  # one model was bad input
    out = root / "out"
    for stem in ("digits_cnn", "tabular_mlp"):
        report = json.loads((out / f"{stem}.report.json").read_text())
        assert report["verdict"]["passed"] and (out / f"{stem}.onnx").is_file()
    assert not list(out.glob("damaged*"))
    lines = done.stdout.splitlines()
    assert any(line.startswith("PASS digits_cnn.pt2") for line in lines)
    assert any(line.startswith("ERROR damaged.pt2") and "copy or save" in line for line in lines)
    assert lines[-2:] == [
        "ERROR: 2/3 models passed, 0 failed parity, 1 could not be converted",
        "wrote out/summary.json (+ .md, .html)",
    ]
    assert "Traceback" not in done.stdout + done.stderr


def test_the_aggregate_lists_every_model_worst_first(zoo: tuple[Path, object]) -> None:
    root, _ = zoo
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary["schema"] == "bnfold.summary/1" and summary["passed"] is False
    rows = summary["models"]
    assert [r["status"] for r in rows] == ["error", "passed", "passed"]
    assert rows[0]["model"] == "damaged.pt2" and rows[0]["report"] is None and rows[0]["reason"]
    passed = rows[1:]
    assert passed[0]["error_ratio"] >= passed[1]["error_ratio"]  # the larger error ratio first
    assert {r["batchnorm_found"] for r in passed} == {4, 2} and all(r["max_abs_err"] < 1e-3 for r in passed)
    assert (root / "out" / "summary.md").read_text().count("\n| ") == 4  # header + three rows
    page = (root / "out" / "summary.html").read_text()
    assert "damaged.pt2" in page and '<a href="digits_cnn.report.html">digits_cnn.pt2</a>' in page


def test_check_reads_the_aggregate(zoo: tuple[Path, object]) -> None:
    root, _ = zoo
    verdict = check_reports([root / "out" / "summary.json"])
    assert not verdict and len(verdict.results) == 3
    assert [r.passed for r in verdict.results] == [False, True, True]
    done = run_cli("check", "out/summary.json", cwd=root)
    assert done.returncode == 1 and "2/3 reports pass" in done.stdout


@pytest.mark.parametrize(
    ("models", "says"),
    [
        ({"schema": "bnfold.summary/2", "models": []}, 'summary schema "bnfold.summary/2" is not readable'),
        ({"schema": "bnfold.summary/1"}, "lists no models"),
        ({"schema": "bnfold.summary/1", "models": []}, "lists no models"),
        ({"schema": "bnfold.summary/1", "models": [{"report": "a.report.json"}]}, r"models\[0\] has no model name"),
    ],
)
def test_check_refuses_a_summary_it_cannot_judge(tmp_path: Path, models: dict[str, object], says: str) -> None:
    """A summary of another major version, or one listing no models, is bad input (one line, exit 2): judged,
    it would pass or fail on nothing."""
    (tmp_path / "summary.json").write_text(json.dumps(models))
    with pytest.raises(ReportError, match=says):
        check_reports([tmp_path / "summary.json"])
    done = run_cli("check", "summary.json", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == "" and len(done.stderr.strip().splitlines()) == 1


def test_two_models_may_not_write_the_same_file(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="would both write"):
        plan([tmp_path / "a" / "m.pt2", tmp_path / "b" / "m.pt2"], tmp_path / "out")
    runs = plan([tmp_path / "m.onnx", tmp_path / "m.pt2"], tmp_path / "out")
    assert [r.output.name for r in runs] == ["m.folded.onnx", "m.onnx"]


@pytest.mark.parametrize(
    ("inputs", "clash"),
    [
        (["m.onnx", "m.pt2"], "m.pt2 would write .*m.onnx, which is the input .*m.onnx"),  # m.pt2 -> m.onnx
        (["m.report.json", "m.pt2"], "m.pt2 would write .*m.report.json, which is the input"),  # an ONNX file
        (["summary.json"], "the summary would write .*summary.json, which is the input"),
        (["m.pt2", "sub/../m.pt2"], r"sub/\.\./m.pt2 is given twice \(.*m.pt2\): give each model once"),
    ],
)
def test_no_model_writes_what_another_reads(tmp_path: Path, inputs: list[str], clash: str) -> None:
    (tmp_path / "sub").mkdir()
    with pytest.raises(OutputError, match=clash):
        plan([tmp_path / name for name in inputs], tmp_path)


def test_a_model_that_would_overwrite_another_is_refused_before_any_work(tmp_path: Path) -> None:
    """``a.onnx`` and ``a.pt2`` into their own folder: ``a.pt2``'s output is ``a.onnx``. Refused in one line, exit
    2, both inputs as they were and nothing written."""
    shutil.copy(MODELS / "digits_cnn.pt2", tmp_path / "a.pt2")
    assert run_cli("convert", "a.pt2", "-o", "b.onnx", "--no-bench", "-q", cwd=tmp_path).returncode == 0
    (tmp_path / "b.onnx").rename(tmp_path / "a.onnx")
    for stale in tmp_path.glob("b.*"):
        stale.unlink()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    done = run_cli("convert", "a.onnx", "a.pt2", "--output-dir", ".", "--jobs", "2", "--no-bench", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "a.pt2 would write a.onnx, which is the input a.onnx" in done.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize(("codes", "expected"), [((0, 0), 0), ((0, 1), 1), ((1, 2), 2), ((0, 2), 2)])
def test_exit_code_of_a_batch(codes: tuple[int, ...], expected: int) -> None:
    runs = [ModelRun(Path("m.pt2"), Path("m.onnx"), exit_code=c) for c in codes]
    assert exit_code(runs) == expected


def test_among_passing_models_one_with_batchnorms_left_comes_first() -> None:
    """A reader triages top down: a model that kept BNs matters more than a small error ratio elsewhere."""
    from bnfold.report.aggregate import SummaryRow, _worst_first

    rows = [
        SummaryRow(model="clean", status="passed", batchnorm_found=4, batchnorm_folded=4, error_ratio=3.0),
        SummaryRow(model="kept", status="passed", batchnorm_found=2, batchnorm_folded=1, error_ratio=1.0),
        SummaryRow(model="broken", status="error"),
        SummaryRow(model="wrong", status="failed", batchnorm_found=2, batchnorm_folded=2, error_ratio=9.0),
    ]
    assert [r.model for r in sorted(rows, key=_worst_first)] == ["broken", "wrong", "kept", "clean"]
