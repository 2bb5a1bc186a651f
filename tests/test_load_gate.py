"""The loading gate: whatever reader runs inside it, nothing from the file runs.

Each payload writes a marker file when it runs. Each test first runs the same read outside the gate (the
positive control: the payload really runs), then inside it (refused, marker absent).
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import sympy
import torch

from bnfold.load.gate import UntrustedFileError, is_data_global, untrusted


class Touch:
    """Unpickling it runs ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {self.marker}",))


def _pickled(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2), "x": Touch(marker)}, buffer)
    return buffer.getvalue()


def _reads(marker: Path) -> dict[str, Callable[[], object]]:
    """Ways torch's readers unpickle or evaluate a file's bytes, each running the payload when unguarded."""
    data = _pickled(marker)
    command = f"__import__('os').system('touch {marker}')"
    return {
        "torch.load(weights_only=False)": lambda: torch.load(io.BytesIO(data), weights_only=False),
        "pickle.loads": lambda: pickle.loads(pickle.dumps(Touch(marker))),
        "sympy.sympify": lambda: sympy.sympify(command),
        "open for writing": lambda: open(marker, "w").close(),  # noqa: SIM115
    }


READS = ["torch.load(weights_only=False)", "pickle.loads", "sympy.sympify", "open for writing"]


@pytest.mark.parametrize("read", READS)
def test_payload_runs_outside_the_gate_and_not_inside(tmp_path: Path, read: str) -> None:
    marker = tmp_path / "pwned"
    _reads(marker)[read]()
    assert marker.exists()  # positive control
    marker.unlink()
    with pytest.raises(UntrustedFileError) as info, untrusted(tmp_path / "model.pt2", "test file"):
        _reads(marker)[read]()
    assert not marker.exists()
    assert "--trust-code" in str(info.value) and "\n" not in str(info.value)


def test_a_swallowed_refusal_still_fails_the_read(tmp_path: Path) -> None:
    """torch's readers catch exceptions and try again another way: the gate remembers what it refused."""
    marker = tmp_path / "pwned"
    data = _pickled(marker)
    with pytest.raises(UntrustedFileError, match="posix.system"), untrusted(tmp_path / "m.pt", "test file"):
        try:
            torch.load(io.BytesIO(data), weights_only=False)
        except BaseException:  # noqa: BLE001, S110 - what a careless fallback does
            pass
    assert not marker.exists()


def test_plain_tensor_data_passes_the_gate(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    state = {"w": torch.randn(3, 3), "b": torch.arange(4, dtype=torch.int64)}
    torch.save(state, buffer, _use_new_zipfile_serialization=False)
    with untrusted(tmp_path / "m.pt", "test file"):
        loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
        shape = sympy.sympify("Symbol('s0', positive=True, integer=True) * 2 + 1")
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["b"], state["b"])
    assert str(shape) == "2*s0 + 1"


def test_the_gate_is_idle_outside_a_read(tmp_path: Path) -> None:
    target = tmp_path / "written"
    with pytest.raises(UntrustedFileError), untrusted(tmp_path / "m.pt", "test file"):
        target.write_text("x")
    target.write_text("x")  # after the read, writing works again
    assert target.read_text() == "x"


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("torch._utils._rebuild_tensor_v2", True),
        ("torch.FloatStorage", True),
        ("torch.float32", True),
        ("collections.OrderedDict", True),
        ("torch._utils._import_dotted_name", False),
        ("torch.load", False),
        ("posix.system", False),
        ("builtins.eval", False),
        ("torch.nn.modules.conv.Conv2d", False),
    ],
)
def test_data_globals(name: str, allowed: bool) -> None:
    assert is_data_global(name) is allowed


@pytest.mark.parametrize(
    ("module", "attribute", "call"),
    [
        ("torch._C", "_pickle_load_obj", lambda f: f(b"\x80\x02N.")),
        ("torch._C._aoti", "AOTIModelPackageLoader", lambda f: f.load_metadata_from_package("m.pt2", "model")),
    ],
)
def test_native_loaders_are_refused_inside_the_gate_only(
    tmp_path: Path, module: str, attribute: str, call: Callable[[object], object]
) -> None:
    """Compiled AOTInductor code and TorchScript custom objects are read by native code, which raises no
    audit event: the gate replaces their entry points while it is armed, and puts them back after."""
    import importlib

    owner = importlib.import_module(module)
    original = getattr(owner, attribute)
    with pytest.raises(UntrustedFileError, match="--trust-code"), untrusted(tmp_path / "m.pt2", "test file"):
        call(getattr(owner, attribute))
    assert getattr(owner, attribute) is original


@pytest.mark.parametrize(
    "source",
    [
        "from os import system\nsystem('touch MARKER')",  # statements, not an expression
        "import os\nos.system('touch MARKER')",
        "exec(\"open('MARKER', 'w')\")",
        "__import__('os').system('touch MARKER')",
        "().__class__.__base__.__subclasses__()",
    ],
)
def test_code_compiled_while_reading_is_refused_in_either_mode(tmp_path: Path, source: str) -> None:
    marker = tmp_path / "pwned"
    code = source.replace("MARKER", str(marker))
    exec(compile(code, "<string>", "exec"), {})  # noqa: S102 - positive control: outside the gate it runs
    assert marker.exists() or "subclasses" in source
    if marker.exists():
        marker.unlink()
    with pytest.raises(UntrustedFileError), untrusted(tmp_path / "m.pt2", "test file"):
        exec(compile(code, "<string>", "exec"), {})  # noqa: S102
    assert not marker.exists()
