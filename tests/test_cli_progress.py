"""What ``convert`` shows while it works: one plain line per stage off a terminal, tqdm bars on one, and
nothing at all with ``-q`` -- not even what torch and onnxruntime log."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import MODELS, ROOT, STAGE_LINE, run_cli

from bnfold.progress import STAGES, ProgressEvent, Stages
from bnfold.terminal import TerminalProgress


def test_off_a_terminal_each_stage_is_one_plain_line_with_its_time(tmp_path: Path) -> None:
    done = run_cli("convert", str(MODELS / "digits_cnn.pt2"), "-o", str(tmp_path / "d.onnx"), "--batch", "1,4")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert [line.split()[0] for line in lines] == list(STAGES), done.stderr
    assert all(STAGE_LINE.match(line) for line in lines), done.stderr
    assert "\x1b" not in done.stderr and "\r" not in done.stderr and "%|" not in done.stderr


def test_on_a_terminal_steps_draw_a_bar_that_leaves_the_stage_line() -> None:
    stream = io.StringIO()
    drawer = TerminalProgress(stream, tty=True)
    stages = Stages(drawer)
    with stages.stage("parity", "checking parity on 2 input batches"):
        for done in range(1, 11):
            stages.step("model runs", done, 10)
    text = stream.getvalue()
    assert "parity: model runs" in text and "10/10" in text and "%|" in text  # tqdm's bar
    assert text.rstrip("\n").rsplit("\r", 1)[-1].startswith("parity ")  # the bar cleared, the stage line left


def test_a_library_user_gets_events_and_str_is_a_line(tmp_path: Path) -> None:
    import bnfold

    events: list[ProgressEvent] = []
    bnfold.convert(
        MODELS / "tabular_mlp.pt2",
        bnfold.ConvertConfig(output=tmp_path / "m.onnx", bench=False),
        progress=events.append,
    )
    ends = [e for e in events if e.kind == "end"]
    assert [e.stage for e in ends] == ["load", "fold+export", "parity", "reports"]
    assert all(e.seconds is not None and e.seconds >= 0 for e in ends)
    steps = [e for e in events if e.kind == "step"]
    assert steps and steps[-1].done == steps[-1].total and steps[-1].stage == "parity"
    assert str(ends[0]).startswith("load ") and " s: loading " in str(ends[0])


SPECIALISED = '''
import torch
from torch import nn


class Specialised(nn.Module):
    """Conv + BN whose forward takes batch 1 only: torch logs that it specialised the batch dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).view(1, 4, 6, 6)


def build() -> nn.Module:
    return Specialised()
'''


@pytest.mark.parametrize("outcome", ["pass", "parity failure"])
def test_quiet_prints_nothing_even_when_torch_logs(tmp_path: Path, outcome: str) -> None:
    (tmp_path / "specialised_arch.py").write_text(textwrap.dedent(SPECIALISED))
    sys.path.insert(0, str(tmp_path))
    try:
        import specialised_arch  # type: ignore[import-not-found]

        torch.save(specialised_arch.build().state_dict(), tmp_path / "weights.pt")
    finally:
        sys.path.remove(str(tmp_path))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    env.pop("BNFOLD_DEBUG", None)
    args = [
        "convert",
        str(tmp_path / "weights.pt"),
        "--model",
        "specialised_arch:build",
        "--input-shape",
        "1,1,6,6",
        "-o",
        str(tmp_path / "out.onnx"),
        "--random-batches",
        "1",
        "-q",
    ]
    if outcome == "parity failure":
        args += ["--atol", "0", "--rtol", "0"]
    done = subprocess.run(
        [sys.executable, "-m", "bnfold", *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert done.returncode == (0 if outcome == "pass" else 1)
    assert done.stdout == "" and done.stderr == ""
    warnings = json.loads((tmp_path / "out.report.json").read_text())["warnings"]
    assert any("0/1 specialized" in w for w in warnings), warnings


def test_quiet_still_prints_the_error_line(tmp_path: Path) -> None:
    model = tmp_path / "model.pt2"
    model.write_bytes(b"\x00" * 100)
    done = run_cli("convert", str(model), "-q")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("Error: ") and len(done.stderr.splitlines()) == 1
