"""Hostile model files: nothing in a file bnfold reads may run, and no file may make it read without bound.

The files are built in ``hostile.py`` (and ``hostile_sizes.py``) from a small clean model, each with one
thing an attacker changed; ``hostile_child.py`` is the child process that runs controls and measured runs.
A payload, when something runs it, creates a marker file beside the model.

* Positive controls first: loaded with torch's own unsafe reader (in a child process), every payload runs,
  and every clean version of an odd archive layout loads; the files of the size fixtures declare what
  they claim to declare.
* Then every hostile file goes through every command (``convert``, ``inspect``, ``verify`` in both
  positions, ``bench``) and through the Python API (``load_model``, ``convert``): a refusal, exit 2 with
  one ``Error:`` line (naming ``--trust-code`` when the danger is code), the marker absent, nothing written,
  the input unchanged. Most runs are in this process (``bnfold.cli.main``); the size fixtures run in child
  processes that measure CPU time and peak memory; a few files also go through a real ``bnfold`` process.
* The legitimate formats still load.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hostile
import hostile_child
import pytest
import torch
from hostile import AMBIGUOUS_CLEAN, CLEAN_PT2, FACTORY, SHAPE, SHAPE_ARG, SPECS, Base, Spec
from hostile_sizes import SIZE_SPECS, SizeSpec
from hostile_zip import write_zip, write_zip_by_hand, zeros_bomb

import bnfold
from bnfold.cli import main
from bnfold.errors import LoadError

COMMANDS = ("convert", "inspect", "verify-original", "verify-candidate", "bench")
API_CALLS = ("api-load", "api-convert")
DUPLICATES = {  # member -> the two orders; which copy torch reads depends on the name (see the control)
    hostile.WEIGHTS_CONFIG: ("pt2-duplicate-config-clean-first", "pt2-duplicate-config-evil-first"),
    hostile.SAMPLE_INPUTS: ("pt2-duplicate-inputs-clean-first", "pt2-duplicate-inputs-evil-first"),
}
IN_A_PAIR = {name for pair in DUPLICATES.values() for name in pair}
SPEC = {s.name: s for s in SPECS}
SIZE = {s.name: s for s in SIZE_SPECS}
CLI_RUNS = {  # (spec, command) run by a real bnfold process
    "pt2-weight-pickle": "convert",
    "pt2-sympy-stealth": "inspect",
    "torchscript-setstate": "convert",
    "torch-save-module-legacy-env": "verify-candidate",
}
# one child process for the size fixtures, the FIFO last: if a read blocks where no signal reaches it,
# the child is killed and only what comes after is lost
SIZE_ORDER = sorted(SIZE, key=lambda name: "fifo" in name)
MAX_CPU_SECONDS = 0.5  # bnfold's own time to refuse a hostile size (torch imported, a model loaded)
MAX_PEAK_GROWTH_MIB = 256
CHILD_ADDRESS_SPACE = 4 << 30  # a reader that inflates a 3 GiB bomb fails fast instead of swapping
JOB_TIMEOUT = 20
CHILD_TIMEOUT = 300
WORKERS = 3


# --- building ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A hostile file on disk: its spec, the model file, its directory and the payload's marker."""

    spec: Spec
    path: Path
    marker: Path

    @property
    def directory(self) -> Path:
        return self.path.parent


@dataclass(frozen=True)
class SizeCase:
    spec: SizeSpec
    paths: list[Path]

    @property
    def path(self) -> Path:
        return self.paths[0]


@dataclass
class World:
    """Everything built once per module."""

    root: Path
    base: Base
    code: Path  # holds the factories module; the current directory of child processes
    good: Path  # a clean .pt2 (the original in ``verify good.pt2 FILE``)
    other_onnx: Path  # a clean .onnx (the candidate in ``verify FILE other.onnx``)
    cases: dict[str, Case]
    sizes: dict[str, SizeCase]
    clean: dict[str, Path]
    legit: dict[str, Path]


def build_cases(root: Path, base: Base) -> dict[str, Case]:
    cases = {}
    for spec in SPECS:
        directory = root / spec.name
        directory.mkdir(parents=True)
        marker = directory / "pwned"
        cases[spec.name] = Case(spec, spec.build(directory, marker, base), marker)
    return cases


def build_clean(root: Path, base: Base) -> dict[str, Path]:
    root.mkdir()
    clean = {}
    for name, (entries, folder) in CLEAN_PT2.items():
        (root / name).mkdir()
        clean[name] = write_zip(root / name / "model.pt2", entries(base), folder)
    return clean


def build_legit(root: Path, base: Base) -> dict[str, Path]:
    """Legitimate files of every other format (and a clean TorchScript archive and pickled module)."""
    import onnx

    root.mkdir()
    model, state = base.model(), base.model().state_dict()
    files = {
        "state-dict-zip": hostile.saved(state),
        "state-dict-legacy": hostile.saved(state, legacy=True),
        "checkpoint-zip": hostile.saved({"state_dict": state, "epoch": 3}),
        "checkpoint-legacy": hostile.saved({"state_dict": state, "epoch": 3}, legacy=True),
        "pickled-module": hostile.saved(model),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = root / f"{name}.pt"
        paths[name].write_bytes(data)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, root / "weights.safetensors")
    paths["safetensors"] = root / "weights.safetensors"
    (root / "onnx").mkdir()
    onnx.save_model(
        onnx.load_from_string(base.onnx),
        root / "onnx" / "model.onnx",
        save_as_external_data=True,
        location="weights.data",
        size_threshold=0,
    )
    paths["onnx-external-data"] = root / "onnx" / "model.onnx"
    torch.jit.save(torch.jit.script(model), root / "scripted.pt")
    paths["torchscript"] = root / "scripted.pt"
    return paths


def build_sizes(root: Path, base: Base) -> dict[str, SizeCase]:
    sizes = {}
    for spec in SIZE_SPECS:
        (root / spec.name).mkdir(parents=True)
        sizes[spec.name] = SizeCase(spec, spec.build(root / spec.name, base))
    return sizes


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("hostile")
    (root / "code").mkdir()
    base = hostile.build_base(root / "code")
    good = write_zip(root / "good.pt2", base.pt2, "good/")
    (root / "other.onnx").write_bytes(base.onnx)
    return World(
        root,
        base,
        root / "code",
        good,
        root / "other.onnx",
        build_cases(root / "cases", base),
        build_sizes(root / "sizes", base),
        build_clean(root / "clean", base),
        build_legit(root / "legit", base),
    )


# --- child processes: controls, size runs, real CLI runs ---------------------------------------------


def child_env(world: World, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BNFOLD_DEBUG", *hostile.FORCE_UNSAFE)}
    env["PYTHONPATH"] = os.pathsep.join([str(world.code), str(Path(hostile.__file__).parent)])
    return env | (extra or {})


def limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))


def run_controls(world: World) -> dict[str, dict[str, Any]]:
    """Every hostile file (a fresh copy, with its own marker) and every clean archive through torch."""
    directory = world.root / "controls"
    directory.mkdir()
    jobs, expected = [], {}
    for spec in SPECS:
        (directory / spec.name).mkdir()
        marker = directory / spec.name / "pwned"
        path = spec.build(directory / spec.name, marker, world.base)
        jobs.append(
            dict(path=str(path), loader=spec.control, env=spec.env, outcome=str(directory / spec.name / "outcome"))
        )
        expected[spec.name] = marker
    for path in world.clean.values():
        jobs.append(dict(path=str(path), loader="export", env={}, outcome=str(path.parent / "outcome")))
    (directory / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run(
        [sys.executable, hostile_child.__file__, "controls", str(directory / "jobs.json")],
        env=child_env(world),
        cwd=world.code,
        capture_output=True,
        text=True,
        timeout=600,
    )
    results = {}
    for spec in SPECS:
        outcome = directory / spec.name / "outcome"
        results[spec.name] = {
            "ran": expected[spec.name].exists(),
            "outcome": outcome.read_text() if outcome.exists() else f"no outcome: {done.stderr}",
        }
    for name, path in world.clean.items():
        outcome = path.parent / "outcome"
        results["clean:" + name] = {"outcome": outcome.read_text() if outcome.exists() else done.stderr}
    return results


@dataclass
class Outcome:
    """How one bnfold run ended: the exit code (or what escaped), stdout, stderr, and for child runs the
    CPU time and the growth of the peak memory."""

    code: Any
    stdout: str
    stderr: str
    cpu_seconds: float | None = None
    peak_growth_mib: float | None = None


def command_argv(command: str, path: Path, args: tuple[str, ...], world: World, out: Path) -> list[str]:
    if command == "convert":
        return [
            "convert",
            str(path),
            "-o",
            str(out / "model.onnx"),
            "--report",
            str(out / "model.report.json"),
            "--no-bench",
            "-q",
            *args,
        ]
    if command == "inspect":
        return ["inspect", str(path), *args]
    if command == "verify-original":
        return ["verify", str(path), str(world.other_onnx), "--report", str(out / "verify.report.json"), "-q", *args]
    if command == "verify-candidate":
        return ["verify", str(world.good), str(path), "--report", str(out / "verify.report.json"), "-q", *args]
    if command == "bench":
        return ["bench", str(path)]
    raise ValueError(command)


def api_call(command: str, path: Path, factory: str | None, args: tuple[str, ...], out: Path) -> dict[str, Any]:
    shapes = [list(SHAPE)] if "--input-shape" in args else []
    kind = command.removeprefix("api-")
    return dict(kind=kind, path=str(path), factory=factory, input_shapes=shapes, output=str(out / "api.onnx"))


def run_sizes(world: World) -> dict[tuple[str, str], Outcome]:
    """Every command on each size fixture, in one child process (torch imported once)."""
    directory = world.root / "size-runs"
    directory.mkdir()
    jobs, keys = [], []
    for name in SIZE_ORDER:
        case = world.sizes[name]
        for command in COMMANDS + API_CALLS:
            out = world.root / "size-out" / name / command
            out.mkdir(parents=True)
            if command in API_CALLS:
                job: dict[str, Any] = {"api": api_call(command, case.path, case.spec.factory, case.spec.args, out)}
            else:
                job = {"argv": command_argv(command, case.path, case.spec.args, world, out)}
            jobs.append(job | {"timeout": JOB_TIMEOUT})
            keys.append((name, command))
    plan = {"warmup": [str(world.good), str(world.other_onnx)], "jobs": jobs}
    (directory / "plan.json").write_text(json.dumps(plan))
    results = directory / "results.json"
    try:
        done = subprocess.run(
            [sys.executable, hostile_child.__file__, "commands", str(directory / "plan.json"), str(results)],
            env=child_env(world),
            cwd=world.code,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            preexec_fn=limit_address_space,
        )
        failure = f"the child process ended with {done.returncode} before this job: {done.stderr[-2000:]}"
    except subprocess.TimeoutExpired:
        failure = "the child process hung and was killed before this job ended"
    found = json.loads(results.read_text()) if results.exists() else []
    return {key: Outcome(**found[i]) if i < len(found) else Outcome(failure, "", "") for i, key in enumerate(keys)}


def run_real_cli(world: World, name: str, command: str) -> tuple[Case, Outcome, Path, dict[str, str]]:
    """One hostile file (its own copy) through a real ``bnfold`` process, from a fresh directory."""
    spec = SPEC[name]
    directory = world.root / "cli" / name
    directory.mkdir(parents=True)
    case = Case(spec, spec.build(directory, directory / "pwned", world.base), directory / "pwned")
    out = world.root / "cli-out" / name
    out.mkdir(parents=True)
    before = snapshot(directory)
    done = subprocess.run(
        [sys.executable, "-m", "bnfold", *command_argv(command, case.path, spec.args, world, out)],
        env=child_env(world, spec.env),
        cwd=out,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return case, Outcome(done.returncode, done.stdout, done.stderr), out, before


@dataclass
class Background:
    controls: dict[str, dict[str, Any]]
    sizes: dict[tuple[str, str], Outcome]
    cli: dict[str, tuple[Case, Outcome, Path, dict[str, str]]]
    size_inputs_before: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def background(world: World) -> Background:
    """All the child processes, side by side, finished before any test looks at them (nothing of bnfold
    runs in this process meanwhile)."""
    before = {name: snapshot(case.path.parent) for name, case in world.sizes.items()}
    with ThreadPoolExecutor(WORKERS) as pool:
        controls = pool.submit(run_controls, world)
        sizes = pool.submit(run_sizes, world)
        cli = {name: pool.submit(run_real_cli, world, name, command) for name, command in CLI_RUNS.items()}
        return Background(controls.result(), sizes.result(), {k: f.result() for k, f in cli.items()}, before)


# --- running bnfold in this process ------------------------------------------------------------------


def snapshot(directory: Path) -> dict[str, str]:
    """Every path under ``directory`` (hidden ones too) with its content hash (FIFOs and links by kind)."""
    found = {}
    for path in sorted(directory.rglob("*")):
        key = str(path.relative_to(directory))
        if path.is_symlink():
            found[key] = "<link> " + os.readlink(path)
        elif path.is_fifo():
            found[key] = "<fifo>"
        elif path.is_dir():
            found[key] = "<dir>"
        else:
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def run_in_process(argv: list[str], capfd: pytest.CaptureFixture[str]) -> Outcome:
    capfd.readouterr()
    try:
        main(argv)
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:  # noqa: BLE001 - a refusal that escapes main is a failure to report
        code = f"{type(exc).__module__}.{type(exc).__name__} escaped: {exc}"
    out, err = capfd.readouterr()
    return Outcome(code, out, err)


def call_api(call: dict[str, Any]) -> Outcome:
    code, message = hostile_child.api_outcome(call)
    return Outcome(code, "", message)


def assert_refused(outcome: Outcome, out: Path, *, code_bearing: bool, api: bool = False) -> None:
    """Exit 2, one ``Error:`` line and nothing else, ``--trust-code`` named for code, nothing written."""
    assert outcome.code == 2, f"not refused: {outcome.code!r}\n{outcome.stderr[-3000:]}"
    assert "Traceback" not in outcome.stderr, outcome.stderr
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"not one Error: line:\n{outcome.stderr[-3000:]}"
    assert outcome.stdout == ""
    if code_bearing:
        named = "--trust-code" in lines[0] or (api and "trust_code" in lines[0])
        assert named, f"the refusal does not say how to trust the file: {lines[0]}"
    assert snapshot(out) == {}, "something was written in the output directory"


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world: World) -> Path:
    """An empty output directory, made the current one; the factories importable; no debug, no torch
    environment overrides unless a case sets them."""
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    monkeypatch.syspath_prepend(str(world.code))
    monkeypatch.delenv("BNFOLD_DEBUG", raising=False)
    for key in hostile.FORCE_UNSAFE:
        monkeypatch.delenv(key, raising=False)
    return out


# --- positive controls -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [s.name for s in SPECS if s.name not in IN_A_PAIR])
def test_control_the_payload_runs_under_torch(background: Background, name: str) -> None:
    """Loaded with torch's own reader, the payload runs (and with ``loads``, the load even succeeds)."""
    control = background.controls[name]
    assert control["ran"], f"the payload did not run under {SPEC[name].control}: {control['outcome']}"
    if SPEC[name].loads:
        assert control["outcome"] == "loaded", control["outcome"]


@pytest.mark.parametrize("member", list(DUPLICATES))
def test_control_torch_reads_one_of_the_duplicates(background: Background, member: str) -> None:
    """Two members named alike: torch reads one copy, so one of the two orders runs the payload."""
    runs = [background.controls[name]["ran"] for name in DUPLICATES[member]]
    assert any(runs), [background.controls[name]["outcome"] for name in DUPLICATES[member]]


def test_control_torch_and_zipfile_read_different_duplicates(world: World, tmp_path: Path) -> None:
    """Why a duplicate name is refused, not resolved: of two clean copies of the example inputs, torch's
    reader (miniz, a binary search over the sorted names) takes the first and Python's zipfile the last,
    so a check made with one reader says nothing of what the other loads."""
    first = hostile.saved(((torch.full(SHAPE, 1.0),), {}))
    last = hostile.saved(((torch.full(SHAPE, 2.0),), {}))
    entries = [(n, d) for n, d in world.base.pt2 if n != hostile.SAMPLE_INPUTS]
    path = write_zip(tmp_path / "model.pt2", entries + [(hostile.SAMPLE_INPUTS, first), (hostile.SAMPLE_INPUTS, last)])
    program = torch.export.load(str(path))
    assert program.example_inputs[0][0][0, 0, 0, 0].item() == 1.0  # torch: the first copy
    with zipfile.ZipFile(path) as archive:
        assert archive.read("archive/" + hostile.SAMPLE_INPUTS) == last  # zipfile: the last one


@pytest.mark.parametrize("name", list(CLEAN_PT2))
def test_control_torch_loads_the_clean_layout(background: Background, name: str) -> None:
    """Each odd layout is one torch accepts: without its payload, the archive loads."""
    assert background.controls["clean:" + name]["outcome"] == "loaded"


@pytest.mark.parametrize("name", list(SIZE))
def test_control_the_size_is_what_the_fixture_claims(world: World, name: str) -> None:
    case = world.sizes[name]
    assert case.spec.claim(case.paths)


def test_control_the_bomb_builder_makes_valid_zips(tmp_path: Path) -> None:
    """The bomb builder at a small size: zipfile inflates the member in full, its CRC and size check out."""
    bomb = zeros_bomb(5 << 20)  # 1 + 4 chunks: the CRCs are combined
    path = write_zip_by_hand(tmp_path / "b.zip", [("a.txt", b"hello"), ("bomb", bomb)], "archive/")
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        assert archive.read("archive/bomb") == bytes(5 << 20)
        assert archive.read("archive/a.txt") == b"hello"
    assert path.stat().st_size < 16 << 10


# --- hostile files through every command, in this process -------------------------------------------


@pytest.mark.parametrize("command", COMMANDS + API_CALLS)
@pytest.mark.parametrize("name", [s.name for s in SPECS])
def test_refused(
    world: World,
    fresh: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    command: str,
) -> None:
    case = world.cases[name]
    for key, value in case.spec.env.items():
        monkeypatch.setenv(key, value)
    case.marker.unlink(missing_ok=True)
    before = snapshot(case.directory)
    if command in API_CALLS:
        outcome = call_api(api_call(command, case.path, case.spec.factory, case.spec.args, fresh))
    else:
        outcome = run_in_process(command_argv(command, case.path, case.spec.args, world, fresh), capfd)
    assert not case.marker.exists(), f"the payload ran ({outcome.code!r})"
    # bench refuses any file that is not ONNX without reading it: its refusal need not be about code
    assert_refused(outcome, fresh, code_bearing=case.spec.code and command != "bench", api=command in API_CALLS)
    assert snapshot(case.directory) == before, "the input's directory changed"


# --- hostile sizes, in child processes that measure ---------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS + API_CALLS)
@pytest.mark.parametrize("name", list(SIZE))
def test_refused_fast_and_small(world: World, background: Background, name: str, command: str) -> None:
    outcome = background.sizes[(name, command)]
    out = world.root / "size-out" / name / command
    assert_refused(outcome, out, code_bearing=False, api=command in API_CALLS)
    assert outcome.cpu_seconds is not None and outcome.cpu_seconds < MAX_CPU_SECONDS, outcome.cpu_seconds
    if outcome.peak_growth_mib is not None:
        assert outcome.peak_growth_mib < MAX_PEAK_GROWTH_MIB, f"peak memory grew {outcome.peak_growth_mib:.0f} MiB"
    assert snapshot(world.sizes[name].path.parent) == background.size_inputs_before[name]


# --- a few real bnfold processes ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CLI_RUNS))
def test_refused_by_a_real_process(background: Background, name: str) -> None:
    case, outcome, out, before = background.cli[name]
    assert not case.marker.exists(), "the payload ran"
    assert_refused(outcome, out, code_bearing=case.spec.code)
    assert snapshot(case.directory) == before


# --- what is legitimate still loads ------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in CLEAN_PT2 if n not in AMBIGUOUS_CLEAN])
def test_clean_archives_load(world: World, fresh: Path, name: str) -> None:
    loaded = bnfold.load_model(world.clean[name])
    assert loaded.format == "torch.export"
    assert loaded.example_inputs is not None and tuple(loaded.example_inputs[0].shape) == SHAPE
    assert loaded.dynamic_batch == (name == "pt2-dynamic-batch")
    assert loaded.module is not None and tuple(loaded.module(*loaded.example_inputs).shape) == (2, 4, 8, 8)


@pytest.mark.parametrize(
    "name", ["state-dict-zip", "state-dict-legacy", "checkpoint-zip", "checkpoint-legacy", "safetensors"]
)
def test_weights_load_with_their_factory(world: World, fresh: Path, name: str) -> None:
    loaded = bnfold.load_model(world.legit[name], factory=FACTORY)
    expected = world.base.model().state_dict()
    assert loaded.module is not None
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_onnx_with_external_data_loads(world: World, fresh: Path) -> None:
    loaded = bnfold.load_model(world.legit["onnx-external-data"])
    assert loaded.format == "onnx" and loaded.onnx_model is not None
    assert all(not t.external_data for t in loaded.onnx_model.graph.initializer)


@pytest.mark.parametrize("name", ["torchscript", "pickled-module"])
def test_code_bearing_formats_load_only_when_trusted(world: World, fresh: Path, name: str) -> None:
    path = world.legit[name]
    with pytest.raises(LoadError, match="--trust-code"):
        bnfold.load_model(path)
    loaded = bnfold.load_model(path, trust_code=True)
    assert loaded.module is not None and tuple(loaded.module(torch.zeros(SHAPE)).shape) == (2, 4, 8, 8)


@pytest.mark.parametrize("flag", ["--trust-code", "--trust-pickle"])
def test_torchscript_through_the_cli_with_the_flag(
    world: World, fresh: Path, capfd: pytest.CaptureFixture[str], flag: str
) -> None:
    path = world.legit["torchscript"]
    refused = run_in_process(["inspect", str(path), "--input-shape", SHAPE_ARG], capfd)
    assert_refused(refused, fresh, code_bearing=True)
    trusted = run_in_process(["inspect", str(path), "--input-shape", SHAPE_ARG, flag], capfd)
    assert trusted.code == 0, trusted.stderr
    assert "1/1 BatchNorms fold" in trusted.stdout
