"""Bad input through the command line: exit 2, one ``Error: ...`` line that says what is wrong and what to
do, no traceback, nothing on stdout, and nothing left on disk (no output, no temporary file).

Every case runs in its own directory, once per module, in this process (``run_in_process``: output
captured down to the file descriptors); the runs that need a process of their own (``--debug``'s traceback, a
usage error) are real ``bnfold`` processes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import MODELS, STAGE_LINE, run_cli, run_in_process

FACTORIES = """
from collections import OrderedDict

from torch import nn


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        layers = OrderedDict(conv=nn.Conv2d(1, 4, 3, padding=1), norm=nn.BatchNorm2d(4), relu=nn.ReLU())
        self.features = nn.Sequential(layers)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class Boom(Small):
    def forward(self, x):
        raise ValueError("boom")


def small():
    return Small().eval()


def boom():
    return Boom().eval()


def explodes():
    raise RuntimeError("no GPU found")


def not_a_module():
    return {"weight": 1}
"""
CODE = "bnfold_cli_factories"
SMALL_SHAPE = ("--input-shape", "2,1,8,8")
RANDOM = np.random.default_rng(0).bytes(4096)
WORKERS = 3


class Evil:
    """Unpickling it runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return os.system, (self.command,)


@dataclass(frozen=True)
class Files:
    """Inputs shared by the cases, built once; a case copies what it uses into its own directory."""

    code: Path  # the current directory of every run: it holds the factory module
    small_state: dict[str, torch.Tensor]
    small_torchscript: Path
    small_onnx: Path


Setup = Callable[[Path, Files], list[str]]


@dataclass(frozen=True)
class Case:
    """A bad input: how to make it (files in the case directory, returns the CLI arguments) and what the
    error line must contain."""

    id: str
    setup: Setup
    expect: tuple[str, ...]


@dataclass
class Outcome:
    done: subprocess.CompletedProcess[str]
    before: dict[str, str]
    after: dict[str, str]


def convert_args(directory: Path, model: Path, *options: str, output: str = "out.onnx") -> list[str]:
    return ["convert", str(model), "-o", str(directory / output), "--no-bench", *options]


def convert_bytes(name: str, data: bytes, *options: str) -> Setup:
    def setup(directory: Path, _: Files) -> list[str]:
        (directory / name).write_bytes(data)
        return convert_args(directory, directory / name, *options)

    return setup


def convert_copy(source: Path, *options: str, output: str = "out.onnx") -> Setup:
    def setup(directory: Path, _: Files) -> list[str]:
        shutil.copy(source, directory / source.name)
        return convert_args(directory, directory / source.name, *options, output=output)

    return setup


def convert_shared(attribute: str, *options: str, output: str = "out.onnx") -> Setup:
    """A copy of one of the shared :class:`Files`."""

    def setup(directory: Path, files: Files) -> list[str]:
        return convert_copy(getattr(files, attribute), *options, output=output)(directory, files)

    return setup


def convert_state(factory: str | None, *options: str, corrupt: str = "", value: float = 0.0) -> Setup:
    """The small model's state_dict with ``--model factory`` (``corrupt``: a buffer whose entry 1 becomes
    ``value``)."""

    def setup(directory: Path, files: Files) -> list[str]:
        state = {k: v.clone() for k, v in files.small_state.items()}
        if corrupt:
            state[corrupt][1] = value
        torch.save(state, directory / "weights.pt")
        model = ["--model", factory] if factory else []
        return convert_args(directory, directory / "weights.pt", *model, *options)

    return setup


def damaged_running_var(value: float) -> Setup:
    return convert_state(f"{CODE}:small", *SMALL_SHAPE, corrupt="features.norm.running_var", value=value)


def truncated_pt2(directory: Path, files: Files) -> list[str]:
    data = (MODELS / "digits_cnn.pt2").read_bytes()
    return convert_bytes("digits_cnn.pt2", data[: len(data) // 2])(directory, files)


def zip_of_text(directory: Path, _: Files) -> list[str]:
    with zipfile.ZipFile(directory / "model.pt", "w") as archive:
        archive.writestr("readme.txt", "hello")
    return convert_args(directory, directory / "model.pt")


def a_directory(directory: Path, _: Files) -> list[str]:
    (directory / "model.pt2").mkdir()
    return convert_args(directory, directory / "model.pt2")


def missing_path(directory: Path, _: Files) -> list[str]:
    return convert_args(directory, directory / "model.pt2")


def check_file(name: str, text: str) -> Setup:
    def setup(directory: Path, _: Files) -> list[str]:
        (directory / name).write_text(text)
        return ["check", str(directory / name)]

    return setup


def malicious_pickle(*options: str) -> Setup:
    def setup(directory: Path, _: Files) -> list[str]:
        torch.save(Evil(f"touch {directory / 'MARKER'}"), directory / "model.pt")
        return convert_args(directory, directory / "model.pt", *options)

    return setup


def report_over_output(directory: Path, files: Files) -> list[str]:
    return convert_shared("small_onnx", "--report", str(directory / "out.onnx"))(directory, files)


def data_over_report(directory: Path, files: Files) -> list[str]:
    """``--data`` names the report ``-o out.onnx`` writes by default (no ``--report`` given)."""
    return convert_copy(DIGITS, "--data", str(directory / "out.report.json"))(directory, files)


def debug_empty_file(directory: Path, files: Files) -> list[str]:
    return ["--debug", *convert_bytes("model.pt2", b"")(directory, files)]


def unknown_option(_: Path, __: Files) -> list[str]:
    return ["convert", "--frobnicate"]


SUPPORTED = "give a torch.export archive (.pt2)"
DIGITS = MODELS / "digits_cnn.pt2"

CASES = [
    Case("empty-file", convert_bytes("model.pt2", b""), ("is empty (0 bytes)", SUPPORTED)),
    Case("random-bytes", convert_bytes("model.bin", RANDOM), ("is not a model file bnfold can read", SUPPORTED)),
    Case(
        "truncated-pt2",
        truncated_pt2,
        ("starts like a zip archive but its end is missing", "copy or save the file again"),
    ),
    Case(
        "text-named-pt2",
        convert_bytes("model.pt2", b"<html>404 Not Found</html>\n"),
        ("the name says a torch.export archive but the content is not one", "text file", SUPPORTED),
    ),
    Case("zip-not-torch", zip_of_text, ("is a zip archive but not a model archive", SUPPORTED)),
    Case("directory", a_directory, ("is a directory", "give the model file itself")),
    Case("missing-path", missing_path, ("model.pt2: no such file",)),
    Case(
        "random-bytes-onnx",
        convert_bytes("model.onnx", RANDOM),
        ("the name says an ONNX model but the content is not one", SUPPORTED),
    ),
    Case(
        "random-bytes-safetensors",
        convert_bytes("model.safetensors", RANDOM),
        ("the name says a safetensors file but the content is not one", SUPPORTED),
    ),
    Case(
        "state-dict-without-model",
        convert_state(None, *SMALL_SHAPE),
        ("is a state_dict: it holds weights but no architecture", "--model package.module:factory"),
    ),
    Case(
        "model-missing-module",
        convert_state("no_such_package_xyz.arch:build", *SMALL_SHAPE),
        ("cannot import no_such_package_xyz.arch", "add that directory to PYTHONPATH"),
    ),
    Case(
        "model-missing-attribute",
        convert_state(f"{CODE}:absent", *SMALL_SHAPE),
        (f"--model {CODE}:absent", "has no callable named 'absent'"),
    ),
    Case(
        "model-callable-raises",
        convert_state(f"{CODE}:explodes", *SMALL_SHAPE),
        ("calling it failed (RuntimeError: no GPU found)", "with no arguments"),
    ),
    Case(
        "model-returns-non-module",
        convert_state(f"{CODE}:not_a_module", *SMALL_SHAPE),
        ("returned a dict, not a torch.nn.Module",),
    ),
    Case("forward-raises", convert_state(f"{CODE}:boom", *SMALL_SHAPE), ("ValueError: boom",)),
    Case("running-var-nan", damaged_running_var(float("nan")), ("features.norm", "running_var", "NaN", "restore it")),
    Case("running-var-inf", damaged_running_var(float("inf")), ("features.norm", "running_var", "Inf", "restore it")),
    Case("running-var-negative", damaged_running_var(-1.0), ("features.norm", "running_var", "negative", "restore it")),
    Case("input-shape-rank-pt2", convert_copy(DIGITS, "--input-shape", "8,8"), ("--input-shape",)),
    Case("input-shape-rank-state-dict", convert_state(f"{CODE}:small", "--input-shape", "8,8"), ("--input-shape",)),
    Case(
        "input-shape-rank-torchscript",
        convert_shared("small_torchscript", "--trust-code", "--input-shape", "8,8"),
        ("--input-shape",),
    ),
    Case("input-shape-rank-onnx", convert_shared("small_onnx", "--input-shape", "8,8"), ("--input-shape",)),
    Case(
        "input-shape-twice",
        convert_copy(DIGITS, "--input-shape", "2,1,8,8", "--input-shape", "2,1,8,8"),
        ("takes 1 input(s), --input-shape gave 2: give it once per input",),
    ),
    Case(
        "recalibrate-not-npz",
        convert_copy(DIGITS, "--recalibrate", str(DIGITS)),
        ("--recalibrate", "cannot read its arrays", "numpy.savez"),
    ),
    Case("data-is-the-default-report", data_over_report, ("the JSON report", "is the --data file")),
    Case(
        "input-shape-not-numeric",
        convert_copy(DIGITS, "--input-shape", "a,b"),
        ("--input-shape 'a,b'", "is not an integer", "like 1,3,224,224"),
    ),
    # an ONNX input: the outputs are only checked once the model is loaded, which is quick for ONNX
    Case(
        "output-is-input",
        convert_shared("small_onnx", output="small.onnx"),
        ("is the input file itself", "choose another output path"),
    ),
    Case(
        "output-directory-missing",
        convert_shared("small_onnx", output="missing/out.onnx"),
        ("does not exist", "create it first"),
    ),
    Case("report-is-output", report_over_output, ("--report",)),
    Case(
        "report-not-json",  # its companions would be x.report.md.md and x.report.md.html
        convert_shared("small_onnx", "--report", "x.report.md"),
        ("--report x.report.md", "the report is JSON", "ending in .json"),
    ),
    Case("check-not-json", check_file("notes.txt", "hello\n"), ("not a bnfold report", "not JSON")),
    Case(
        "check-json-without-schema",
        check_file("other.json", json.dumps({"parity": {}})),
        ("not a bnfold report", 'no "schema" key'),
    ),
    Case("malicious-pickle", malicious_pickle(), ("posix.system", "--trust-code")),
    Case(
        "malicious-pickle-with-model",
        malicious_pickle("--model", f"{CODE}:small", *SMALL_SHAPE),
        ("posix.system", "--trust-code"),
    ),
]
ERROR_CASES = {case.id: case for case in CASES}
OTHER_RUNS: dict[str, Setup] = {"debug": debug_empty_file, "unknown-option": unknown_option}


def snapshot(directory: Path) -> dict[str, str]:
    """Every path under ``directory`` (hidden ones too) with its content hash."""
    return {
        str(p.relative_to(directory)): "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
    }


def import_factories(code: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(CODE, code / f"{CODE}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_files(root: Path) -> Files:
    code = root / "code"
    code.mkdir()
    (code / f"{CODE}.py").write_text(FACTORIES)
    small = import_factories(code).small()
    example = (torch.randn(2, 1, 8, 8),)
    torch.jit.save(torch.jit.trace(small, example), root / "small.torchscript.pt")
    torch.onnx.export(small, example, root / "small.onnx", dynamo=False, do_constant_folding=False)
    return Files(code, small.state_dict(), root / "small.torchscript.pt", root / "small.onnx")


def run_case(directory: Path, files: Files, args: list[str], in_process: bool = True) -> Outcome:
    before = snapshot(directory)
    done = (run_in_process if in_process else run_cli)(*args, cwd=files.code)
    return Outcome(done, before, snapshot(directory))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Files, dict[str, str]]:
    root = tmp_path_factory.mktemp("bad_input")
    files = build_files(root)
    return root, files, snapshot(files.code)


@pytest.fixture(scope="module")
def outcomes(workspace: tuple[Path, Files, dict[str, str]]) -> dict[str, Outcome]:
    root, files, _ = workspace
    setups = {case.id: case.setup for case in CASES} | OTHER_RUNS
    jobs = {}
    for key, setup in setups.items():
        directory = root / key
        directory.mkdir()
        jobs[key] = (directory, setup(directory, files))
    with ThreadPoolExecutor(WORKERS) as pool:  # the few real processes run beside the in-process cases
        processes = {key: pool.submit(run_case, jobs[key][0], files, jobs[key][1], False) for key in OTHER_RUNS}
        outcomes = {
            key: run_case(directory, files, args) for key, (directory, args) in jobs.items() if key not in OTHER_RUNS
        }
        return outcomes | {key: future.result() for key, future in processes.items()}


CASE_IDS = [case.id for case in CASES]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_one_error_line_that_says_what_to_do(outcomes: dict[str, Outcome], case_id: str) -> None:
    done = outcomes[case_id].done
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip() and not STAGE_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    for expected in ERROR_CASES[case_id].expect:
        assert expected in lines[0]
    assert done.stdout == ""


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_nothing_is_left_on_disk(outcomes: dict[str, Outcome], case_id: str) -> None:
    outcome = outcomes[case_id]
    assert outcome.after == outcome.before


def test_nothing_is_written_to_the_working_directory(
    workspace: tuple[Path, Files, dict[str, str]], outcomes: dict[str, Outcome]
) -> None:
    _, files, before = workspace
    after = {k: v for k, v in snapshot(files.code).items() if "__pycache__" not in k}
    assert after == before


@pytest.mark.parametrize("case_id", ["malicious-pickle", "malicious-pickle-with-model"])
def test_malicious_pickle_does_not_run(
    workspace: tuple[Path, Files, dict[str, str]], outcomes: dict[str, Outcome], case_id: str
) -> None:
    root, _, _ = workspace
    assert outcomes[case_id].done.returncode == 2
    assert not (root / case_id / "MARKER").exists()


def test_the_malicious_payload_is_live(tmp_path: Path) -> None:
    """The control: unpickled in full, such a file does run its command, so the refusal is what stops it."""
    torch.save(Evil(f"touch {tmp_path / 'MARKER'}"), tmp_path / "model.pt")
    torch.load(tmp_path / "model.pt", weights_only=False)
    assert (tmp_path / "MARKER").exists()


def test_debug_shows_the_traceback(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["debug"]
    assert outcome.done.returncode != 0
    assert "Traceback" in outcome.done.stderr and "LoadError" in outcome.done.stderr
    assert "is empty (0 bytes)" in outcome.done.stderr
    assert outcome.after == outcome.before


def test_unknown_option_is_a_usage_error(outcomes: dict[str, Outcome]) -> None:
    done = outcomes["unknown-option"].done
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr == "Error: No such option '--frobnicate'; see 'bnfold convert --help'\n"
