"""bfloat16 and float16 models: the fold computes in float64 and casts back to the model's dtype; parity is
judged against a float64 run of the original at that dtype's tolerance (bnfold.verify.tolerance)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fold_models import assert_matches, image, randomise, reference
from torch import nn

from bnfold.convert import ConvertConfig, convert
from bnfold.fold import fold
from bnfold.verify.tolerance import Tolerance

DTYPES = [torch.bfloat16, torch.float16]


def block() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_low_precision_model_folds_in_its_dtype(dtype: torch.dtype) -> None:
    model, x = randomise(block(), seed=81).to(dtype), image(2, 3).to(dtype)
    expected = reference(model, [x])
    result = fold(model, [x])
    assert result.counts["folded"] == 2, [r.describe() for r in result.records]
    assert all(t.dtype == dtype for t in result.module.state_dict().values() if t.is_floating_point())
    tolerance = Tolerance.for_dtype(str(dtype).removeprefix("torch."))
    with torch.no_grad():
        out = result.module(x)
    assert out.dtype == dtype
    assert_matches(out, expected, rtol=tolerance.rtol, atol=tolerance.atol)


def test_bfloat16_model_converts(tmp_path: Path) -> None:
    """bf16 inputs become parity batches (numpy has no bf16) and the ONNX file is written."""
    model, x = randomise(block(), seed=82).to(torch.bfloat16), image(2, 3).to(torch.bfloat16)
    result = convert(
        model,
        example_inputs=(x,),
        config=ConvertConfig(output=tmp_path / "bf16.onnx", bench=False, write_reports=False),
    )
    assert result.report["fold"]["batchnorm_folded"] == 2
    assert (tmp_path / "bf16.onnx").exists()
