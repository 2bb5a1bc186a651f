"""``bnfold convert`` and ``bnfold check`` end to end on the shipped digits CNN, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import MODELS, run_cli


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    out = tmp_path_factory.mktemp("digits")
    onnx_path = out / "digits.onnx"
    done = run_cli(
        "convert",
        str(MODELS / "digits_cnn.pt2"),
        "-o",
        str(onnx_path),
        "--data",
        str(MODELS / "digits_heldout.npz"),
        "--batch",
        "1,8",
    )
    return onnx_path, out / "digits.report.json", done


def test_convert_exits_zero_and_prints_a_summary(converted: tuple[Path, Path, object]) -> None:
    _, _, done = converted
    assert done.returncode == 0, done.stderr
    assert "4 found, 4 folded" in done.stdout
    assert "PASS" in done.stdout
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr


def test_every_batchnorm_is_gone_from_the_onnx_file(converted: tuple[Path, Path, object]) -> None:
    onnx_path, report_path, _ = converted
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    report = json.loads(report_path.read_text())
    assert report["schema"] == "bnfold.report/1"
    assert report["fold"]["batchnorm_found"] == 4 == report["fold"]["batchnorm_folded"]
    assert report["onnx"]["batchnorm_nodes"] == 0
    assert {p.key for p in model.metadata_props} >= {"bnfold.version", "bnfold.fold"}
    used = {name for node in model.graph.node for name in node.input}
    assert all(init.name in used for init in model.graph.initializer)


def test_heldout_predictions_equal_the_original_model(converted: tuple[Path, Path, object]) -> None:
    onnx_path, _, _ = converted
    data = np.load(MODELS / "digits_heldout.npz")
    original = torch.export.load(str(MODELS / "digits_cnn.pt2")).module()
    with torch.no_grad():
        expected = original(torch.from_numpy(data["x"])).argmax(1).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: data["x"]})[0].argmax(1)
    assert np.array_equal(got, expected)
    assert (got == data["y"]).mean() > 0.95


def test_report_has_parity_latency_and_companions(converted: tuple[Path, Path, object]) -> None:
    _, report_path, _ = converted
    report = json.loads(report_path.read_text())
    parity = report["parity"]
    assert parity["passed"] is True and parity["atol"] > 0 and parity["rtol"] > 0
    assert {c["stage"] for c in parity["checks"]} >= {"fold", "export", "ort-optimization"}
    assert any(i["source"].startswith("data") for i in parity["inputs"])
    top1 = [c["top1_agreement"] for c in parity["checks"] if c["top1_agreement"] is not None]
    assert top1 and min(top1) == 1.0
    folded = {(r["backend"], r["batch"]) for r in report["latency"] if r["model"] == "folded"}
    assert ("onnxruntime", 1) in folded and ("onnxruntime", 8) in folded
    assert all(r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in report["latency"])
    assert report_path.with_suffix(".md").exists() and report_path.with_suffix(".html").exists()
    assert report["verdict"]["passed"] is True


def test_check_passes_on_the_report_and_fails_on_a_failed_one(
    converted: tuple[Path, Path, object], tmp_path: Path
) -> None:
    _, report_path, _ = converted
    ok = run_cli("check", str(report_path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(report_path.read_text())
    report["parity"]["passed"] = False
    report["parity"]["failed_stage"] = "export"
    report["parity"]["checks"][0]["passed"] = False
    report["verdict"] = {"passed": False, "reason": "parity failed at stage export"}
    broken = tmp_path / "broken.report.json"
    broken.write_text(json.dumps(report))
    failed = run_cli("check", str(broken))
    assert failed.returncode == 1
    assert len(failed.stdout.strip().splitlines()) == 1


def test_random_bytes_exit_2_with_one_line_and_no_output(tmp_path: Path) -> None:
    model = tmp_path / "model.pt2"
    model.write_bytes(np.random.default_rng(0).bytes(4096))
    done = run_cli("convert", str(model), "--no-bench")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2"]


def test_recalibrate_updates_statistics_and_keeps_parity(tmp_path: Path) -> None:
    heldout = np.load(MODELS / "digits_heldout.npz")
    shifted = tmp_path / "shifted.npz"
    np.savez(shifted, x=(heldout["x"] * 1.5 + 0.2).astype(np.float32))
    done = run_cli(
        "convert",
        str(MODELS / "digits_cnn.pt2"),
        "-o",
        str(tmp_path / "r.onnx"),
        "--recalibrate",
        str(shifted),
        "--no-bench",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "r.report.json").read_text())
    assert report["fold"]["recalibrated"] is True
    changes = [layer["max_stat_change"] for layer in report["fold"]["layers"]]
    assert all(c is not None and c > 0.01 for c in changes)
    assert report["parity"]["passed"] and report["fold"]["batchnorm_folded"] == 4


def test_default_export_is_torchscript_and_dynamo_on_request(
    converted: tuple[Path, Path, object], tmp_path: Path
) -> None:
    _, report_path, _ = converted
    assert json.loads(report_path.read_text())["onnx"]["exporter"] == "torch.onnx.export (TorchScript)"
    onnx_path = tmp_path / "mlp.onnx"
    done = run_cli(
        "convert",
        str(MODELS / "tabular_mlp.pt2"),
        "-o",
        str(onnx_path),
        "--exporter",
        "dynamo",
        "--no-bench",
        "--random-batches",
        "0",
        "-q",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "mlp.report.json").read_text())
    assert report["onnx"]["exporter"] == "torch.onnx.export (dynamo)"
    assert [i["source"] for i in report["parity"]["inputs"]] == ["example"]
    assert report["parity"]["passed"] and report["fold"]["batchnorm_folded"] == 2


def test_external_data_always_writes_weights_beside_the_model(tmp_path: Path) -> None:
    onnx_path = tmp_path / "mlp.onnx"
    done = run_cli(
        "convert",
        str(MODELS / "tabular_mlp.pt2"),
        "-o",
        str(onnx_path),
        "--external-data",
        "always",
        "--no-bench",
    )
    assert done.returncode == 0, done.stderr
    data = tmp_path / "mlp.onnx.data"
    assert data.is_file() and f"weights in {data}" in done.stdout
    report = json.loads((tmp_path / "mlp.report.json").read_text())
    assert report["onnx"]["external_data"] == str(data)
    model = onnx.load(str(onnx_path), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.load(MODELS / "breast_cancer_heldout.npz")["x"][:16]
    original = torch.export.load(str(MODELS / "tabular_mlp.pt2")).module()
    with torch.no_grad():
        expected = original(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], expected, atol=1e-4)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_small_models_stay_one_file_by_default(converted: tuple[Path, Path, object]) -> None:
    onnx_path, report_path, _ = converted
    assert json.loads(report_path.read_text())["onnx"]["external_data"] is None
    assert not onnx_path.with_name(onnx_path.name + ".data").exists()


def test_external_data_never_on_a_model_past_2gb_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bnfold import ConvertConfig, convert, export
    from bnfold.errors import ExportError

    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 1)  # every model is "too big for one file"
    config = ConvertConfig(output=tmp_path / "mlp.onnx", external_data="never", bench=False)
    with pytest.raises(ExportError, match="use --external-data auto"):
        convert(MODELS / "tabular_mlp.pt2", config)
    assert list(tmp_path.iterdir()) == []


def test_save_optimized_writes_a_checked_onnxruntime_model(tmp_path: Path) -> None:
    onnx_path, optimized = tmp_path / "digits.onnx", tmp_path / "digits.ort.onnx"
    done = run_cli(
        "convert",
        str(MODELS / "digits_cnn.pt2"),
        "-o",
        str(onnx_path),
        "--save-optimized",
        str(optimized),
        "--no-bench",
    )
    assert done.returncode == 0, done.stderr
    assert f", {optimized} (onnxruntime-optimized) and" in done.stdout
    report = json.loads((tmp_path / "digits.report.json").read_text())
    assert report["onnx"]["optimized_path"] == str(optimized)
    checks = [c for c in report["parity"]["checks"] if c["candidate"] == "onnxruntime CPU (saved optimized model)"]
    assert {c["reference"] for c in checks} == {"original fp64 (torch)", "onnxruntime CPU (optimizations off)"}
    assert all(c["passed"] for c in checks)
    assert optimized.stat().st_mode & 0o777 == onnx_path.stat().st_mode & 0o777
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(optimized), options, providers=["CPUExecutionProvider"])
    data = np.load(MODELS / "digits_heldout.npz")
    original = torch.export.load(str(MODELS / "digits_cnn.pt2")).module()
    with torch.no_grad():
        expected = original(torch.from_numpy(data["x"])).argmax(1).numpy()
    got = session.run(None, {session.get_inputs()[0].name: data["x"]})[0].argmax(1)
    assert (got == expected).all()


def test_save_optimized_on_another_output_is_refused(tmp_path: Path) -> None:
    onnx_path = tmp_path / "digits.onnx"
    done = run_cli("convert", str(MODELS / "digits_cnn.pt2"), "-o", str(onnx_path), "--save-optimized", str(onnx_path))
    assert done.returncode == 2 and done.stderr.startswith("Error: --save-optimized")
    assert len(done.stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_no_optimized_file_is_left_when_convert_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from bnfold import ConvertConfig

    convert_module = importlib.import_module("bnfold.convert")  # the package; bnfold.convert is the function

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("parity crashed")

    monkeypatch.setattr(convert_module, "verify_stage", broken)
    config = ConvertConfig(output=tmp_path / "d.onnx", save_optimized=tmp_path / "d.ort.onnx", bench=False)
    with pytest.raises(RuntimeError, match="parity crashed"):
        convert_module.convert(MODELS / "digits_cnn.pt2", config)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exporter", ["auto", "torchscript"])
def test_a_torchscript_export_that_fails_parity_is_redone_with_dynamo_under_auto(
    exporter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bnfold import ConvertConfig, convert, export

    real = export.export_torchscript

    def corrupted(*args: object, **kwargs: object) -> export.ExportResult:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        weight = next(t for t in result.model.graph.initializer if len(t.dims) == 2)
        array = onnx.numpy_helper.to_array(weight) * 1.5
        weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
        return result

    monkeypatch.setattr(export, "export_torchscript", corrupted)
    config = ConvertConfig(output=tmp_path / "mlp.onnx", exporter=exporter, bench=False)
    result = convert(MODELS / "tabular_mlp.pt2", config)
    report = result.report
    if exporter == "auto":
        assert result.passed and report["onnx"]["exporter"] == "torch.onnx.export (dynamo)"
        assert report["warnings"][0].startswith("exported with the dynamo exporter: the TorchScript exporter's output")
    else:
        assert not result.passed and report["parity"]["failed_stage"] == "export"
        assert report["onnx"]["exporter"] == "torch.onnx.export (TorchScript)"
    assert (tmp_path / "mlp.onnx").is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_save_optimized_keeps_external_weights_beside_itself(tmp_path: Path) -> None:
    out, opt = tmp_path / "out", tmp_path / "opt"
    out.mkdir(), opt.mkdir()
    done = run_cli(
        "convert",
        str(MODELS / "tabular_mlp.pt2"),
        "-o",
        str(out / "mlp.onnx"),
        "--external-data",
        "always",
        "--save-optimized",
        str(opt / "mlp.onnx"),
        "--no-bench",
        "-q",
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in opt.iterdir()) == ["mlp.onnx", "mlp.onnx.data"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(opt / "mlp.onnx"), options, providers=["CPUExecutionProvider"])
    x = np.load(MODELS / "breast_cancer_heldout.npz")["x"][:16]
    original = torch.export.load(str(MODELS / "tabular_mlp.pt2")).module()
    with torch.no_grad():
        expected = original(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], expected, atol=1e-4)
