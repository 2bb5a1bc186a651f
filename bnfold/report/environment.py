"""The machine and software a report was made on, so latency and error numbers can be compared."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from bnfold.bench.cpu import cpu_model, logical_cores, physical_cores

PACKAGES = ("torch", "onnx", "onnxruntime", "onnxscript", "numpy")


def package_version(name: str) -> str | None:
    """The installed version of a distribution (None when it is not installed)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return _module_version(name)


def _module_version(name: str) -> str | None:
    try:
        module = __import__(name)
    except ImportError:
        return None
    return getattr(module, "__version__", None)


def _execution_providers() -> list[str]:
    try:
        import onnxruntime

        return list(onnxruntime.get_available_providers())
    except ImportError:
        return []


def capture_environment() -> dict[str, Any]:
    """The report's ``environment`` block: CPU, OS, Python, library versions, onnxruntime providers.

    A library's version comes from its distribution, else from its module (so onnxruntime-gpu, a
    distribution of its own, still reports as ``onnxruntime``); None when it is not installed.
    """
    env: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "physical_cores": physical_cores(),
        "logical_cores": logical_cores(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    for name in PACKAGES:
        env[name] = package_version(name)
    env["execution_providers"] = _execution_providers()
    env["bnfold"] = _bnfold_version()
    return env


def _bnfold_version() -> str:
    try:
        return metadata.version("bnfold")
    except metadata.PackageNotFoundError:
        return "unknown"
