"""The allclose rule, default tolerances, per-output overrides, and the shared assert helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnfold.verify import Tolerance, Tolerances, assert_allclose_report, compare_outputs


@pytest.mark.parametrize(
    ("dtype", "atol", "rtol"),
    [
        ("float32", 1e-4, 1e-3),
        (np.float16, 1e-2, 1e-2),
        (torch.float32, 1e-4, 1e-3),
        (torch.float64, 1e-9, 1e-7),
    ],
)
def test_default_tolerance_scales_with_dtype(dtype: object, atol: float, rtol: float) -> None:
    assert Tolerance.for_dtype(dtype) == Tolerance(atol, rtol)


def test_unknown_dtype_has_no_default() -> None:
    with pytest.raises(ValueError, match="int8"):
        Tolerance.for_dtype("int8")


def test_rule_is_allclose_with_reference_on_the_right() -> None:
    tol = Tolerance(atol=0.1, rtol=0.5)
    reference = np.array([0.0, 10.0, 10.0, np.inf, 1.0])
    actual = np.array([0.1, 15.2, 14.9, np.inf, np.nan])
    assert tol.within(actual, reference).tolist() == [True, False, True, True, False]
    numpy_rule = np.isclose(actual, reference, rtol=0.5, atol=0.1)
    assert tol.within(actual, reference).tolist() == numpy_rule.tolist()


def test_nan_in_the_reference_fails_too() -> None:
    assert not Tolerance().within(np.array([np.nan]), np.array([np.nan]))[0]


def test_per_output_overrides_by_name_then_index() -> None:
    loose, looser = Tolerance(1.0, 1.0), Tolerance(2.0, 2.0)
    tols = Tolerances(Tolerance(), {"logits": loose, 1: looser})
    assert tols.for_output(0, "logits") == loose
    assert tols.for_output(1, "other") == looser
    assert tols.for_output(2, None) == Tolerance()


def test_assert_helper_passes_and_returns_metrics() -> None:
    a = np.linspace(-1, 1, 50, dtype=np.float32)
    result = assert_allclose_report([a], [a.astype(np.float64) + 1e-7])
    assert result and result.outputs[0].max_abs_err == pytest.approx(1e-7, rel=0.5)


def test_assert_helper_names_the_failing_output() -> None:
    good, bad = np.zeros(4), np.array([0.0, 0.0, 0.0, 0.5])
    with pytest.raises(AssertionError, match=r"output 1: FAIL: max abs 5\.000e-01.*mismatch 25\.00%"):
        assert_allclose_report([good, bad], [good, good], Tolerance(1e-3, 1e-3))


def test_compare_reports_output_count_and_shape_mismatch() -> None:
    assert "2 outputs, expected 1" in compare_outputs([np.zeros(2), np.zeros(2)], [np.zeros(2)]).describe()
    shape = compare_outputs(np.zeros((2, 3)), np.zeros((3, 2)))
    assert not shape and "shape (2, 3) != reference shape (3, 2)" in shape.describe()
