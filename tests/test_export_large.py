"""Models past protobuf's 2 GB: every stage works from files, and the report describes the files written.

The fast tests lower the size limits so a small model takes the paths a large one takes; the slow one
converts a real model of 2.1 GB of weights (``-m "not slow"`` leaves it out).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from conftest import MODELS, run_cli

from bnfold import ConvertConfig, convert, export

PAST_THE_LIMIT = "through a file with external data"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def assert_report_describes_the_files(report: dict, onnx_path: Path) -> None:
    data = onnx_path.with_name(onnx_path.name + ".data")
    section = report["onnx"]
    assert section["external_data"] == str(data)
    assert section["sha256"] == sha256(onnx_path)
    assert section["external_data_sha256"] == sha256(data)
    assert section["size_bytes"] == onnx_path.stat().st_size + data.stat().st_size
    model = onnx.load(str(onnx_path), load_external_data=False)
    assert section["batchnorm_nodes"] == 0 == export.count_ops(model, "BatchNormalization")
    assert section["nodes"] == len(model.graph.node)
    onnx.checker.check_model(str(onnx_path))


@pytest.fixture
def limits_lowered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model is "past 2 GB": exported through a file, saved with external data."""
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 1)


@pytest.mark.parametrize("exporter", ["auto", "dynamo"])
def test_a_model_past_the_limits_converts_from_files(limits_lowered: None, tmp_path: Path, exporter: str) -> None:
    onnx_path, optimized = tmp_path / "digits.onnx", tmp_path / "digits.opt.onnx"
    config = ConvertConfig(output=onnx_path, exporter=exporter, save_optimized=optimized, bench=False)
    result = convert(MODELS / "digits_cnn.pt2", config)
    assert result.passed, result.report["verdict"]
    assert_report_describes_the_files(result.report, onnx_path)
    assert optimized.with_name(optimized.name + ".data").exists()
    assert not any(PAST_THE_LIMIT in w for w in result.report["warnings"])  # the weights never were in a message
    checks = result.report["parity"]["checks"]
    assert {c["candidate"] for c in checks} >= {
        "folded fp32 (torch)",
        "onnxruntime CPU (optimizations all)",
        "onnxruntime CPU (saved optimized model)",
    }


def test_latency_past_the_limits_times_the_unfolded_export_from_a_file(limits_lowered: None, tmp_path: Path) -> None:
    config = ConvertConfig(output=tmp_path / "mlp.onnx", bench=True, seeds=0)
    result = convert(MODELS / "tabular_mlp.pt2", config)
    assert result.passed
    assert {(r["backend"], r["model"]) for r in result.report["latency"]} >= {
        ("onnxruntime", "original"),
        ("onnxruntime", "folded"),
    }


def test_an_onnx_model_past_the_limits_folds_and_verifies_from_its_file(limits_lowered: None, tmp_path: Path) -> None:
    source = tmp_path / "digits.onnx"
    assert convert(MODELS / "digits_cnn.pt2", ConvertConfig(output=source, bench=False, exporter="dynamo")).passed
    folded = tmp_path / "digits.folded.onnx"
    result = convert(source, ConvertConfig(output=folded, bench=False))
    assert result.passed and result.report["parity"]["checks"]
    assert_report_describes_the_files(result.report, folded)
    done = run_cli("verify", str(MODELS / "digits_cnn.pt2"), str(folded))
    assert done.returncode == 0, done.stderr


BUILD = """
import sys, torch
from torch import nn
torch.manual_seed(0)
layers = []
for i in range(8):  # 8 x 8192 x 8192 float32: 2 GiB of weights, and then the biases and BatchNorms
    bn = nn.BatchNorm1d(8192)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.1, 0.1), bn.running_var.uniform_(0.5, 2.0), bn.weight.uniform_(0.5, 1.5)
    layers += [nn.Linear(8192, 8192), bn] + ([nn.ReLU()] if i < 7 else [])
model = nn.Sequential(*layers).eval()
torch.export.save(torch.export.export(model, (torch.randn(4, 8192),)), sys.argv[1])
"""


@pytest.mark.slow
def test_a_model_of_2_1_gb_converts_with_parity(tmp_path: Path) -> None:
    source, onnx_path = tmp_path / "wide.pt2", tmp_path / "wide.onnx"
    subprocess.run([sys.executable, "-c", BUILD, str(source)], check=True, timeout=600)
    assert source.stat().st_size > 2**31
    done = run_cli("convert", str(source), "-o", str(onnx_path), "--no-bench")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(onnx_path.with_name("wide.report.json").read_text())
    assert report["fold"]["batchnorm_found"] == 8 == report["fold"]["batchnorm_folded"]
    assert report["parity"]["passed"] and all(c["passed"] for c in report["parity"]["checks"])
    assert not any(PAST_THE_LIMIT in w for w in report["warnings"])
    assert report["onnx"]["size_bytes"] > 2**31
    assert_report_describes_the_files(report, onnx_path)


@pytest.fixture
def exporter_writes_files(limits_lowered: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TorchScript exporter writes each weight into a file of its own, as it does past 2 GB."""
    from bnfold.export import torchscript

    real = torchscript._torchscript_export

    def per_tensor_files(module: object, inputs: object, target: object, options: dict) -> list[str]:
        said = real(module, inputs, target, options)  # type: ignore[arg-type]
        if isinstance(target, str):
            model = onnx.load(target)
            onnx.save_model(model, target, save_as_external_data=True, all_tensors_to_one_file=False)
        return said

    monkeypatch.setattr(torchscript, "_torchscript_export", per_tensor_files)


def test_past_the_limit_the_exported_weights_stay_in_the_exporters_files(exporter_writes_files: None) -> None:
    import torch
    from torch import nn

    module = torch.fx.symbolic_trace(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval())
    result = export.export_torchscript(module, (torch.randn(2, 64),))
    assert result.files is not None
    external = [t for t in result.model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) == 2 and not any(t.HasField("raw_data") for t in external)
    folder = Path(result.files.name)
    locations = {e.value for t in external for e in t.external_data if e.key == "location"}
    assert all(Path(location).parent == folder.resolve() for location in locations)
    result.release_files()
    assert not folder.exists()


def test_past_the_limit_convert_moves_the_exported_weights_into_its_data_file(
    limits_lowered: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weights go from the file the export wrote them into to ``OUTPUT.data`` without being read into
    a model."""
    from onnx import external_data_helper

    read_back: list[object] = []
    real = external_data_helper.load_external_data_for_model
    monkeypatch.setattr(
        external_data_helper,
        "load_external_data_for_model",
        lambda model, base: read_back.append(base) or real(model, base),
    )
    onnx_path = tmp_path / "digits.onnx"
    result = convert(MODELS / "digits_cnn.pt2", ConvertConfig(output=onnx_path, bench=False))
    assert result.passed, result.report["verdict"]
    assert read_back == []
    assert_report_describes_the_files(result.report, onnx_path)
    assert result.converted is not None and result.converted.exported.files is None
    model = onnx.load(str(onnx_path), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"digits.onnx.data"}
