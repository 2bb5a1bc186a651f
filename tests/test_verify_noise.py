"""Verdicts under default tolerances: a stage fails when it adds error beyond what fp32 arithmetic of this
model makes by itself (the original fp32 model's own error against fp64), not when a fixed atol is exceeded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import bnfold
from bnfold.convert import ConvertConfig
from bnfold.report.html import render_html
from bnfold.report.markdown import render_markdown
from bnfold.report.summary import summary_lines
from bnfold.verify import Candidate, ParitySettings, Tolerance, run_parity
from bnfold.verify.matrix import FOLDED, ORIGINAL
from bnfold.verify.report import BASELINE, FOLD
from bnfold.verify.runners import torch_runner
from bnfold.verify.tolerance import NOISE_FACTOR


def deep_random_net(depth: int = 10, width: int = 32) -> nn.Module:
    """A backbone of conv + BN layers with unscaled random weights: its feature map grows into the
    thousands, with elements near zero beside them, where fp32 rounding exceeds any fixed atol."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1)]
    for _ in range(depth):
        bn = nn.BatchNorm2d(width)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.1, 0.3)
        bn.weight.data.uniform_(2.0, 3.0)
        layers += [bn, nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)]
    return nn.Sequential(*layers).eval()


def _parity(original: nn.Module, folded: nn.Module, tolerance: Tolerance | None = None) -> bnfold.verify.ParityReport:
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    candidates = [
        Candidate(ORIGINAL, torch_runner(original), BASELINE),
        Candidate(FOLDED, torch_runner(folded), FOLD, ORIGINAL),
    ]
    return run_parity(
        torch_runner(original, torch.float64), candidates, ParitySettings([("random", (x.numpy(),))], tolerance)
    )


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return deep_random_net()


def test_exact_fold_of_large_activations_passes(net: nn.Module) -> None:
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert net(x).abs().max() > 1000  # the regime where a fixed atol breaks down
    folded = bnfold.fold(net, (x,)).module
    strict = _parity(net, folded, Tolerance(1e-4, 1e-3))
    assert not strict.passed  # control: the fixed tolerance alone fails even the original fp32 model
    report = _parity(net, folded)
    assert report.passed, report.summary_lines()
    own = next(c for c in report.checks if c.candidate == ORIGINAL)
    fold_vs_fp64 = next(c for c in report.checks if c.candidate == FOLDED and c.stage == FOLD and c.error_ratio)
    assert fold_vs_fp64.noise_bound == pytest.approx(NOISE_FACTOR * own.max_abs_err)
    assert report.to_json()["rule"].endswith("on that output (noise_bound)")


def test_a_wrong_fold_still_fails_on_large_activations(net: nn.Module) -> None:
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    folded = bnfold.fold(net, (x,)).module
    weight = next(p for name, p in folded.named_parameters() if p.dim() == 4 and "weight" in name)
    with torch.no_grad():
        weight.mul_(1.001)  # a 0.1 % error in one layer: far above fp32 noise
    report = _parity(net, folded)
    assert not report.passed
    assert report.failed_stage == FOLD
    failing = report.failures[0]
    assert failing.noise_bound is not None and failing.max_abs_err > failing.noise_bound


def test_user_tolerances_override_the_noise_rule(net: nn.Module) -> None:
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    report = _parity(net, bnfold.fold(net, (x,)).module, Tolerance(1e-4, 1e-3))
    assert all(c.noise_bound is None for c in report.checks)
    assert np.isclose(report.tolerance.atol, 1e-4) and "noise_bound" not in report.to_json()["rule"]


@pytest.mark.parametrize("by", ["index", "index as text", "name"])
def test_a_tolerance_for_one_output_replaces_the_noise_rule_there(tmp_path: Path, by: str) -> None:
    """An output given its own tolerance is judged by it alone, whether the option names it or gives its
    index: a tolerance far below fp32 rounding fails every check on that output."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 8)).eval()
    model[1].running_var.uniform_(0.5, 2.0)
    x = (torch.randn(4, 16),)
    default = bnfold.convert(model, ConvertConfig(output=tmp_path / "a.onnx", bench=False), example_inputs=x)
    assert default.report.parity is not None and default.report.parity.passed
    output = default.report.parity.checks[0].output
    assert not output.isdigit()  # named by the ONNX export: the index and the name are different keys
    key: str | int = {"index": 0, "index as text": "0"}.get(by, output)
    config = ConvertConfig(output=tmp_path / "b.onnx", bench=False, tolerances=((key, 1e-12, 0.0),))
    strict = bnfold.convert(model, config, example_inputs=x).report.parity
    assert strict is not None and not strict.passed
    assert all(c.noise_bound is None for c in strict.checks if c.reference == "fp64 reference")


def test_reports_name_the_tolerance_an_output_was_judged_by(tmp_path: Path) -> None:
    """A tolerance given to the model's one output is the one the summary, Markdown and HTML state (the
    checks were judged by it), not the default the other outputs would have had."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.Linear(32, 8)).eval()
    config = ConvertConfig(output=tmp_path / "m.onnx", bench=False, tolerances=(("0", 3e-3, 2e-2),))
    report = bnfold.convert(model, config, example_inputs=(torch.randn(4, 16),)).report
    assert report.parity is not None and {(c.atol, c.rtol) for c in report.parity.checks} == {(3e-3, 2e-2)}
    assert next(line for line in summary_lines(report) if line.startswith("parity:")).endswith("atol 0.003, rtol 0.02")
    assert "atol 3.0e-03, rtol 2.0e-02" in render_markdown(report)
    assert "atol 3.0e-03, rtol 2.0e-02" in render_html(report)
    assert "1.0e-04" not in render_markdown(report).split("## Parity")[1].split("\n\n")[1]
