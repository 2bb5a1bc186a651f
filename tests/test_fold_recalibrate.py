"""Re-estimated statistics equal torch.optim.swa_utils.update_bn's, and nothing the caller holds changes."""

from __future__ import annotations

import copy

import pytest
import torch
from fold_models import assert_matches, image, randn, randomise
from torch import nn
from torch.optim.swa_utils import update_bn

from bnfold.errors import FoldError, InputSpecError
from bnfold.fold import fold


class Net(nn.Module):
    """Conv, linear and 1-D BNs, a BN shared by two calls, and one that folds backward."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.shared = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)
        self.bn_head = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(self.bn_in(x))))
        y = self.shared(torch.relu(self.shared(self.conv2(y))))
        return self.bn_head(self.head(y.mean((2, 3))))


def _batches(count: int = 3) -> list[torch.Tensor]:
    return [image(2, 3, batch=4, seed=70 + i) * 2 + 1 for i in range(count)]


def _update_bn_reference(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    twin = copy.deepcopy(model)
    update_bn(batches, twin)
    return twin.eval()


def test_recalibrated_fold_equals_update_bn() -> None:
    model = randomise(Net(), seed=71)
    batches = _batches()
    result = fold(model, [batches[0]], calibration=[(b,) for b in batches])
    assert result.recalibrated and result.counts["folded"] == 4  # the shared BN's second call reads a relu
    twin = _update_bn_reference(model, batches).double()
    x = image(2, 3, seed=79) * 2 + 1
    with torch.no_grad():
        assert_matches(result.module(x), twin(x.double()))
    assert all(r.max_stat_change is not None and r.max_stat_change > 0.01 for r in result.records)
    assert any("re-estimated the statistics of 4 BatchNorm(s) from 3" in note for note in result.notes)


def test_max_stat_change_is_the_largest_relative_change() -> None:
    model = randomise(nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3)), seed=72)
    batches = [randn(16, 5, seed=73 + i) * 2 + 1 for i in range(2)]
    old_mean, old_var = model[1].running_mean.clone(), model[1].running_var.clone()
    result = fold(model, [batches[0]], calibration=batches)
    twin = _update_bn_reference(model, batches)
    bn = twin[1]
    mean_shift = ((bn.running_mean.double() - old_mean.double()).abs() / (old_var.double() + 1e-5).sqrt()).max()
    var_change = ((bn.running_var.double() - old_var.double()).abs() / (old_var.double() + 1e-5)).max()
    expected = max(float(mean_shift), float(var_change))
    assert result.records[0].max_stat_change == pytest.approx(expected, rel=1e-4)


def test_callers_model_and_program_keep_their_statistics() -> None:
    model = randomise(Net(), seed=74)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    program = torch.export.export(model, (image(2, 3, batch=4),))
    program_before = {k: v.clone() for k, v in program.state_dict.items()}
    fold(model, [image(2, 3)], calibration=[(b,) for b in _batches(2)])
    fold(program, calibration=[(b,) for b in _batches(2)])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(program_before[k], v) for k, v in program.state_dict.items())


def test_calibration_repairs_damaged_statistics() -> None:
    model = randomise(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), seed=75)
    model[1].running_var[1] = float("nan")
    with pytest.raises(FoldError):
        fold(model, [image(2, 3)])
    batches = _batches(2)
    result = fold(model, [image(2, 3)], calibration=batches)
    with torch.no_grad():
        expected = _update_bn_reference(model, batches).double()(batches[0].double())
        assert_matches(result.module(batches[0]), expected)


def test_no_batches_is_an_input_error() -> None:
    with pytest.raises(InputSpecError, match="no batches"):
        fold(randomise(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))), [image(2, 3)], calibration=[])


def test_a_batch_that_does_not_fit_is_an_input_error() -> None:
    model = randomise(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    with pytest.raises(InputSpecError, match="calibration batch 1 does not fit the model"):
        fold(model, [image(2, 3)], calibration=[image(2, 3), image(2, 5)])


def test_one_sample_per_channel_is_an_input_error() -> None:
    model = randomise(nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3)))
    message = r"^calibration: BatchNorm 1 sees one value per channel.*samples$"
    with pytest.raises(InputSpecError, match=message):
        fold(model, [randn(4, 5)], calibration=[randn(1, 5)])
