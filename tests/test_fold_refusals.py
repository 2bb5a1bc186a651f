"""What must not fold: each BN is kept (as a frozen affine or as is) with a reason, and the numbers match."""

from __future__ import annotations

import pytest
import torch
from fold_models import DenseBlock, SharedOutput, aten_batchnorms, check_fold, image, randomise
from torch import nn

from bnfold.errors import FoldError
from bnfold.fold import fold


def test_producer_output_used_elsewhere() -> None:
    model = randomise(SharedOutput(), seed=60)
    result = check_fold(model, [image(2, 3)], folded=0, exact=False, onnx_export=True)
    record = result.records[0]
    assert record.action == "affine"
    assert record.reason == (
        "cannot fold forward: the output of conv also feeds add; "
        "cannot fold backward: its output feeds add, which is not a conv or linear"
    )


def test_track_running_stats_false_is_kept_as_is() -> None:
    layers = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)
    model = randomise(nn.Sequential(*layers), seed=61)
    result = check_fold(model, [image(2, 3)], folded=0, exact=False)
    record = result.records[0]
    assert record.action == "kept" and "track_running_stats=False" in record.reason
    assert aten_batchnorms(result.module) == 1


def test_training_mode_is_traced_in_eval_and_restored() -> None:
    model = randomise(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)), seed=62)
    model.train()
    model[0].eval()  # mixed flags come back as they were
    stats = model[1].running_mean.clone()
    result = fold(model, [image(2, 3)])
    assert result.counts["folded"] == 1
    assert any("training mode" in note and "eval" in note for note in result.notes)
    assert [m.training for m in model.modules()] == [True, False, True, True]
    assert torch.equal(model[1].running_mean, stats)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(result.module(image(2, 3)), model(image(2, 3)), rtol=1e-4, atol=1e-5)


def test_the_callers_model_is_not_modified() -> None:
    model = randomise(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1)), seed=63)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold(model, [image(2, 3)])
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_densenet_style_block() -> None:
    model = randomise(DenseBlock(), seed=64)
    result = check_fold(model, [image(2, 3, size=5)], folded=4, found=8, exact=False, onnx_export=True)
    folded = {r.name: r.into for r in result.records if r.action == "folded"}
    assert folded == {"stem_bn": ["stem"], **{f"layers.{i}.3": [f"layers.{i}.2"] for i in range(3)}}
    for record in result.records:
        if record.action != "folded":
            assert record.action == "affine" and "which has no weights to fold into" in record.reason


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("running_var", float("nan"), "running_var holds NaN or Inf"),
        ("running_var", float("inf"), "running_var holds NaN or Inf"),
        ("running_var", -1.0, "running_var has negative entries"),
        ("running_mean", float("nan"), "running_mean holds NaN or Inf"),
    ],
)
def test_damaged_statistics_raise_fold_error(field: str, value: float, problem: str) -> None:
    model = randomise(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4))), seed=65)
    getattr(model[1][1], field)[2] = value
    with pytest.raises(FoldError, match=rf"BatchNorm 1\.1 \(BatchNorm2d\): {problem}"):
        fold(model, [image(2, 3)])
