"""SIGINT and SIGTERM during a run: exit 130 / 143, no staging folder left, the previous outputs intact and
consistent (the report still describes the ONNX file beside it)."""

from __future__ import annotations

import importlib.machinery
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from conftest import MODELS, ROOT, snapshot

from bnfold.load.loaded import file_sha256

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's bnfold, whatever the current directory


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bnfold", *args],
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )


def _wait_for_staged_model(directory: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(directory.glob(".bnfold-staging-*/out.onnx.data")):
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended before staging its model: {process.communicate()}")
        time.sleep(0.05)
    raise AssertionError("no staged model appeared")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_leaves_the_previous_set_and_no_staging(tmp_path: Path, signum: int, code: int) -> None:
    args = ["convert", str(MODELS / "digits_cnn.pt2"), "-o", "out.onnx", "--external-data", "always"]
    first = subprocess.run(
        [sys.executable, "-m", "bnfold", *args, "--no-bench", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )
    assert first.returncode == 0, first.stderr
    before = snapshot(tmp_path)
    process = _start([*args, "--batch", "1,8,32", "--random-batches", "3", "--exporter", "dynamo"], tmp_path)
    _wait_for_staged_model(tmp_path, process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before  # no staging folder, the previous outputs untouched
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["onnx"]["sha256"] == file_sha256(tmp_path / "out.onnx")
    assert report["onnx"]["external_data_sha256"] == file_sha256(tmp_path / "out.onnx.data")


@pytest.mark.parametrize(("signum", "group", "code"), [(signal.SIGINT, False, 130), (signal.SIGINT, True, 130),
                                                       (signal.SIGTERM, False, 143)])  # fmt: skip
def test_a_signal_stops_every_worker_of_a_many_model_run_without_leftovers(
    tmp_path: Path, signum: int, group: bool, code: int
) -> None:
    """To the parent alone (a scheduler's SIGTERM) or to the whole group (Ctrl-C): each worker removes its
    staging folder before the run exits, and nothing else is written."""
    (tmp_path / "out").mkdir()
    models = [str(MODELS / "digits_cnn.pt2"), str(MODELS / "tabular_mlp.pt2")]
    process = subprocess.Popen(
        [sys.executable, "-m", "bnfold", "convert", *models, "--output-dir", "out", "--jobs", "2",
         "--batch", "1,8,32", "--random-batches", "3"],
        cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not any((tmp_path / "out").glob(".bnfold-staging-*")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    if group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert err == f"Interrupted ({signal.Signals(signum).name}).\n"
    assert list((tmp_path / "out").iterdir()) == []


def test_the_command_line_starts_without_torch() -> None:
    """``import bnfold.cli`` leaves torch and onnxruntime to the commands that need them: ``--help`` and usage
    errors answer at once, and a Ctrl-C while they load is handled (below)."""
    code = "import sys, bnfold, bnfold.cli; print(sorted({'torch', 'onnxruntime', 'onnx'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0 and done.stdout == "[]\n", done.stderr


@pytest.mark.parametrize("delay", [0.3, 0.8])
def test_a_ctrl_c_while_the_libraries_load_is_an_interruption_not_a_traceback(tmp_path: Path, delay: float) -> None:
    process = _start(["convert", str(MODELS / "digits_cnn.pt2"), "-o", "out.onnx", "--no-bench"], tmp_path)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and err == "Interrupted (SIGINT).\n", err
    assert list(tmp_path.iterdir()) == []


def test_a_signal_while_a_compiled_library_loads_is_acted_on_once_it_has_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception raised inside the import of a library with compiled code can abort the process (seen:
    SIGABRT, SIGSEGV from torch's) or leave it half-initialised: the interruption waits for the import."""
    from bnfold.cli import _app

    spec = importlib.machinery.ModuleSpec("numpy._being_imported", None)
    spec._initializing = True  # type: ignore[attr-defined]  # what importlib sets while a module executes
    module = types.ModuleType(spec.name)
    module.__spec__ = spec
    monkeypatch.setitem(sys.modules, spec.name, module)
    with _app._signals_unwind():
        _app._on_signal(signal.SIGINT, None)  # returns: the import is still running
        assert _app._received == [signal.SIGINT]
        spec._initializing = False  # type: ignore[attr-defined]
        with pytest.raises(_app.Interrupted):
            time.sleep(2)  # the retry finds the import done, and raises
    with _app._signals_unwind(), pytest.raises(_app.Interrupted):  # control: no import running, raised at once
        _app._on_signal(signal.SIGINT, None)
