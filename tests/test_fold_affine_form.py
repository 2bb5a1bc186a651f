"""The two forms of a frozen affine (a BN that cannot fold), each against an fp64 reference."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bnfold import fold
from bnfold.fold.eager import overload_of
from bnfold.fold.graph import BATCHNORMS, aten, fetch


def _kept_model() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1))
    gen = torch.Generator().manual_seed(5)
    bn = model[2]
    bn.running_mean = torch.randn(6, generator=gen)
    bn.running_var = torch.rand(6, generator=gen) + 0.3
    bn.weight.data = torch.randn(6, generator=gen)
    bn.bias.data = torch.randn(6, generator=gen)
    return model.eval()


@pytest.mark.parametrize("form", ["batchnorm", "muladd"])
def test_frozen_affine_matches_the_fp64_reference(form: str) -> None:
    model = _kept_model()
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(6))
    result = fold(model, (x,), affine_form=form)
    assert [r.action for r in result.records] == ["affine"]
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(x.double())
        torch.testing.assert_close(result.module(x).double(), expected, rtol=1e-5, atol=1e-6)
    calls = [n for n in result.module.graph.nodes if n.op == "call_function"]
    norms = [n for n in calls if overload_of(n.target) in BATCHNORMS]
    if form == "muladd":
        assert not norms and {aten.mul.Tensor, aten.add.Tensor} <= {overload_of(n.target) for n in calls}
        return
    (bn,) = norms
    mean, var = (fetch(result.module, str(a.target)) for a in bn.args[3:5])
    assert torch.equal(mean, torch.zeros(6)) and torch.equal(var, torch.ones(6)) and bn.args[7] == 0.0


def test_unknown_affine_form_is_refused() -> None:
    with pytest.raises(ValueError, match="affine_form"):
        fold(_kept_model(), (torch.randn(2, 3, 9, 9),), affine_form="conv")
