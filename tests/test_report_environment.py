"""The environment block of a report."""

from __future__ import annotations

import json
from importlib import metadata

import pytest

from bnfold.report import environment
from bnfold.report.environment import capture_environment

KEYS = {
    "cpu_model",
    "physical_cores",
    "logical_cores",
    "os",
    "python",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "numpy",
    "execution_providers",
    "bnfold",
}


def test_environment_has_every_key_and_is_json() -> None:
    env = capture_environment()
    assert set(env) == KEYS
    assert json.loads(json.dumps(env)) == env
    assert "CPUExecutionProvider" in env["execution_providers"]
    assert 1 <= env["physical_cores"] <= env["logical_cores"]
    assert all(isinstance(env[name], str) for name in ("torch", "onnx", "onnxruntime", "numpy", "python"))


def test_bnfold_version_falls_back_to_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(environment.metadata, "version", not_installed)
    env = capture_environment()
    assert env["bnfold"] == "unknown"
    assert env["numpy"]  # from the module's __version__


def test_a_missing_library_is_none() -> None:
    assert environment.package_version("surely-not-an-installed-distribution") is None
