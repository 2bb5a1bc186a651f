"""The file contract through the command line: a re-run replaces the previous outputs; no output is a file
the run reads, another output, or anything but a regular file (exit 2, one line, nothing written, inputs
byte-identical); the report identifies every file it describes."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MODELS, run_main, snapshot
from torch import nn

from bnfold.load.loaded import file_sha256

DIGITS = MODELS / "digits_cnn.pt2"
FAST = ("--no-bench", "--random-batches", "0", "-q")

FACTORY = """
from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
"""


def assert_refused(code: int, capfd: pytest.CaptureFixture[str], *expect: str) -> str:
    out, err = capfd.readouterr()
    assert code == 2, err
    assert out == "" and err.startswith("Error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for text in expect:
        assert text in err, err
    return err


def assert_consistent(onnx_path: Path, report_path: Path) -> None:
    """The report describes the files beside it: the ONNX file's hash, its external data's hash."""
    report = json.loads(report_path.read_text())
    section = report["onnx"]
    assert section["sha256"] == file_sha256(onnx_path)
    data = onnx_path.with_name(onnx_path.name + ".data")
    if section["external_data"]:
        assert Path(section["external_data"]).name == data.name
        assert section["external_data_sha256"] == file_sha256(data)
    else:
        assert section["external_data_sha256"] is None and not data.exists()
    import onnx

    onnx.checker.check_model(str(onnx_path))
    assert not [p for p in onnx_path.parent.iterdir() if p.name.startswith(".bnfold")]


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding a copy of the digits model and its held-out data."""
    here = tmp_path / "work"
    here.mkdir()
    shutil.copy(DIGITS, here / "digits.pt2")
    shutil.copy(MODELS / "digits_heldout.npz", here / "heldout.npz")
    monkeypatch.chdir(here)
    return here


@pytest.mark.parametrize("where", ["cwd", "relative-subdir", "absolute-elsewhere"])
def test_a_rerun_replaces_the_previous_outputs(
    work: Path, tmp_path: Path, where: str, capfd: pytest.CaptureFixture[str]
) -> None:
    (work / "sub").mkdir()
    (tmp_path / "elsewhere").mkdir()
    output = {
        "cwd": "out.onnx",
        "relative-subdir": "sub/out.onnx",
        "absolute-elsewhere": str(tmp_path / "elsewhere" / "out.onnx"),
    }[where]
    for _ in range(2):
        code = run_main("convert", "digits.pt2", "-o", output, "--external-data", "always", *FAST)
        assert code == 0, capfd.readouterr().err
    target = Path(output) if Path(output).is_absolute() else work / output
    assert_consistent(target, target.with_name("out.report.json"))
    code = run_main("convert", "digits.pt2", "-o", output, "--external-data", "never", *FAST)
    assert code == 0
    assert_consistent(target, target.with_name("out.report.json"))  # the stale .data went with its set


def test_a_rerun_of_a_model_over_1mb_under_the_default(work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    model = nn.Sequential(nn.Linear(600, 600), nn.BatchNorm1d(600)).eval()
    example = (torch.randn(2, 600),)
    torch.export.save(torch.export.export(model, example), work / "wide.pt2")
    for _ in range(2):
        assert run_main("convert", "wide.pt2", *FAST) == 0, capfd.readouterr().err
    assert (work / "wide.onnx.data").exists()
    assert_consistent(work / "wide.onnx", work / "wide.report.json")


def _onnx_with_external_data(work: Path) -> Path:
    assert run_main("convert", "digits.pt2", "-o", "ext.onnx", "--external-data", "always", *FAST) == 0
    for name in ("ext.report.json", "ext.report.md", "ext.report.html"):
        (work / name).unlink()
    return work / "ext.onnx"


CLASHES = {
    "output-is-data": (["convert", "digits.pt2", "-o", "heldout.npz", "--data", "heldout.npz"], "--data"),
    "report-is-data": (["convert", "digits.pt2", "--report", "heldout.npz", "--data", "heldout.npz"], "--data"),
    "output-is-recalibrate": (
        ["convert", "digits.pt2", "-o", "heldout.npz", "--recalibrate", "heldout.npz"],
        "--recalibrate",
    ),
    "report-is-recalibrate-via-dot": (
        ["convert", "digits.pt2", "--report", "./heldout.npz", "--recalibrate", "heldout.npz"],
        "--recalibrate",
    ),
    "report-is-factory-source": (["convert", "digits.pt2", "--model", "arch:build", "--report", "arch.py"], "--model"),
    "report-is-output-data": (["convert", "digits.pt2", "-o", "out.onnx", "--report", "out.onnx.data"], "--report"),
    "optimized-is-output-data": (
        ["convert", "digits.pt2", "-o", "out.onnx", "--save-optimized", "out.onnx.data"],
        "--save-optimized",
    ),
    "markdown-is-output": (["convert", "digits.pt2", "-o", "r.md", "--report", "r.json"], "same file"),
    "verify-report-is-original": (["verify", "digits.pt2", "digits.pt2", "--report", "digits.pt2"], "original"),
    "verify-report-is-candidate": (["verify", "digits.pt2", "heldout.npz", "--report", "heldout.npz"], "candidate"),
}


@pytest.mark.parametrize("case", sorted(CLASHES))
def test_an_output_that_is_an_input_or_another_output_is_refused(
    work: Path, case: str, capfd: pytest.CaptureFixture[str]
) -> None:
    (work / "arch.py").write_text(FACTORY)
    args, expect = CLASHES[case]
    before = snapshot(work)
    assert_refused(run_main(*args, *(FAST if args[0] == "convert" else ("-q",))), capfd, expect)
    assert snapshot(work) == before


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_links_to_an_input_are_the_input(work: Path, link: str, capfd: pytest.CaptureFixture[str]) -> None:
    (os.symlink if link == "symlink" else os.link)(work / "heldout.npz", work / "alias.json")
    before = snapshot(work)
    args = ["convert", "digits.pt2", "--report", "alias.json", "--data", "heldout.npz", *FAST]
    assert_refused(run_main(*args), capfd, "--data")
    assert snapshot(work) == before


@pytest.mark.parametrize("option", ["-o", "--report"])
def test_the_input_external_data_is_never_an_output(work: Path, option: str, capfd: pytest.CaptureFixture[str]) -> None:
    model = _onnx_with_external_data(work)
    capfd.readouterr()
    before = snapshot(work)
    assert_refused(run_main("convert", model, option, "ext.onnx.data", *FAST), capfd, "external data")
    assert snapshot(work) == before


@pytest.mark.parametrize("option", ["-o", "--report", "--save-optimized"])
def test_a_fifo_output_is_refused(work: Path, option: str, capfd: pytest.CaptureFixture[str]) -> None:
    os.mkfifo(work / "pipe")
    before = snapshot(work)
    assert_refused(run_main("convert", "digits.pt2", option, "pipe", *FAST), capfd, "not a regular file", "FIFO")
    assert snapshot(work) == before and stat.S_ISFIFO(os.stat(work / "pipe").st_mode)


def test_a_device_output_is_refused(work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    device = Path("/dev/full")
    if not device.exists() or not stat.S_ISCHR(os.stat(device).st_mode):
        pytest.skip("no /dev/full character device here")
    before = snapshot(work)
    assert_refused(run_main("convert", "digits.pt2", "--report", device, *FAST), capfd, "character device")
    assert stat.S_ISCHR(os.stat(device).st_mode)
    assert snapshot(work) == before


def test_an_output_name_too_long_for_the_file_system_is_refused(work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    before = snapshot(work)
    assert_refused(run_main("convert", "digits.pt2", "-o", "x" * 300 + ".onnx", *FAST), capfd, "longer")
    assert snapshot(work) == before


def test_staging_left_by_a_killed_run_is_removed_by_the_next(work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    dead = 2**22 + 12345  # above pid_max's default: no such process
    leftover = work / f".bnfold-staging-{dead}-abc"
    leftover.mkdir()
    (leftover / "out.onnx").write_bytes(b"partial")
    mine = work / f".bnfold-staging-{os.getpid()}-live"  # a live owner's: kept
    mine.mkdir()
    assert run_main("convert", "digits.pt2", "-o", "out.onnx", *FAST) == 0, capfd.readouterr().err
    assert not leftover.exists() and mine.exists()


def test_verify_writes_its_report_set(work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert run_main("convert", "digits.pt2", "-o", "out.onnx", *FAST) == 0
    for _ in range(2):
        assert run_main("verify", "digits.pt2", "out.onnx", "--report", "v.json", "-q") == 0
    assert json.loads((work / "v.json").read_text())["verdict"]["passed"]
    assert (work / "v.md").exists() and (work / "v.html").exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".bnfold")]


def test_data_is_byte_identical_after_a_run(work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    before = file_sha256(work / "heldout.npz"), file_sha256(work / "digits.pt2")
    assert run_main("convert", "digits.pt2", "--data", "heldout.npz", "--recalibrate", "heldout.npz", *FAST) in (0, 1)
    assert (file_sha256(work / "heldout.npz"), file_sha256(work / "digits.pt2")) == before
    assert np.load(work / "heldout.npz")  # still a readable archive


def _full_disk(*args: object, **kwargs: object) -> None:
    import errno

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_disk_that_fills_up_while_the_weights_are_written_is_one_line_and_leaves_nothing(
    work: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bnfold.export import files

    before = snapshot(work)
    monkeypatch.setattr(files.HashingWriter, "write", _full_disk)
    code = run_main("convert", "digits.pt2", "-o", "out.onnx", *FAST)
    assert_refused(code, capfd, "ran out of space", str(work.resolve()), "write the outputs elsewhere")
    assert snapshot(work) == before  # no output, no staging folder, the input untouched


def test_a_disk_that_fills_up_while_a_report_is_written_is_one_line(
    work: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_main("convert", "digits.pt2", "-o", "out.onnx", *FAST) == 0
    capfd.readouterr()
    before = snapshot(work)
    write_text = Path.write_text

    def fills_up_at_the_markdown(path: Path, *args: object, **kwargs: object) -> int:
        if path.suffix == ".md":  # the JSON report is written: the set is half done
            _full_disk()
        return write_text(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", fills_up_at_the_markdown)
    code = run_main("verify", "digits.pt2", "out.onnx", "--report", "verify.json", "-q")
    assert_refused(code, capfd, "ran out of space")
    assert snapshot(work) == before


def test_only_a_full_file_system_is_said_as_one_line() -> None:
    """The control: an error that is not about space is not turned into a user's error."""
    import errno

    from bnfold.errors import OutputError
    from bnfold.outputs import out_of_space_said

    with pytest.raises(OutputError, match="ran out of space"), out_of_space_said(Path("x/model.onnx")):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    with pytest.raises(OSError, match="Input/output error") as raised, out_of_space_said(Path("x/model.onnx")):
        raise OSError(errno.EIO, "Input/output error")
    assert not isinstance(raised.value, OutputError)
