"""Error metrics of one output, over one batch and aggregated over several."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnfold.verify import Tolerance
from bnfold.verify.metrics import ErrorAccumulator, compare_arrays


def test_single_batch_metrics() -> None:
    reference = np.array([[1.0, -2.0, 4.0, 0.0]])
    actual = np.array([[1.0, -2.5, 4.0, 0.001]])
    m = compare_arrays(actual, reference, Tolerance(atol=0.01, rtol=0.0))
    assert m.max_abs_err == pytest.approx(0.5)
    assert m.mean_abs_err == pytest.approx(0.501 / 4)
    assert m.mismatch_ratio == pytest.approx(0.25)
    # the zero reference element is floored at 1e-6 * max|ref| = 4e-6: 0.001 / 4e-6
    assert m.max_rel_err == pytest.approx(250.0)
    cosine = float(actual.ravel() @ reference.ravel() / np.linalg.norm(actual) / np.linalg.norm(reference))
    assert m.cosine == pytest.approx(cosine)
    assert not m.passed


def test_identical_outputs_pass_with_zero_error_and_unit_cosine() -> None:
    x = np.random.default_rng(0).normal(size=(3, 7))
    m = compare_arrays(x, x, Tolerance(0.0, 0.0))
    assert m.passed and m.max_abs_err == 0.0 and m.max_rel_err == 0.0 and m.cosine == pytest.approx(1.0)
    assert m.top1_agreement == 1.0 and m.top5_agreement == 1.0


def test_all_zero_outputs_have_unit_cosine_and_no_division_by_zero() -> None:
    m = compare_arrays(np.zeros(5), np.zeros(5), Tolerance())
    assert m.passed and m.cosine == 1.0 and m.max_rel_err == 0.0


def test_topk_agreement_only_for_classifier_like_outputs() -> None:
    assert compare_arrays(np.zeros((4, 1)), np.zeros((4, 1)), Tolerance()).top1_agreement is None
    assert compare_arrays(np.zeros(10), np.zeros(10), Tolerance()).top1_agreement is None
    three = compare_arrays(np.eye(3), np.eye(3), Tolerance())
    assert three.top1_agreement == 1.0 and three.top5_agreement is None


def test_topk_agreement_is_against_the_predictions_given() -> None:
    predictions = np.array([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    actual = np.array([[4.0, 5, 3, 2, 1, 0], [5, 1, 2, 3, 4, 0]])  # row 0: top1 swapped; row 1: top5 changed
    m = compare_arrays(actual, np.zeros_like(actual), Tolerance(), predictions=predictions)
    assert m.top1_agreement == 0.0
    assert m.top5_agreement == 0.5


def test_nan_fails_and_propagates_into_the_maximum() -> None:
    acc = ErrorAccumulator(Tolerance())
    acc.add(np.array([np.nan, 0.0]), np.zeros(2), "first")
    acc.add(np.array([1.0, 0.0]), np.zeros(2), "second")
    m = acc.result()
    assert not m.passed and m.nan_count == 1 and math.isnan(m.max_abs_err or 0.0)
    assert m.worst_batch == "first"


def test_aggregation_takes_maxima_and_element_weighted_means() -> None:
    acc = ErrorAccumulator(Tolerance(atol=0.05, rtol=0.0))
    acc.add(np.full(2, 0.1), np.zeros(2), "small")
    acc.add(np.full(6, 0.02), np.zeros(6), "large")
    m = acc.result()
    assert m.max_abs_err == pytest.approx(0.1) and m.worst_batch == "small"
    assert m.mean_abs_err == pytest.approx((0.2 + 0.12) / 8)
    assert m.mismatch_ratio == pytest.approx(2 / 8)


def test_shape_mismatch_fails_with_a_reason() -> None:
    m = compare_arrays(np.zeros((2, 2)), np.zeros((2, 3)), Tolerance())
    assert not m.passed and m.max_abs_err is None and "reference shape (2, 3)" in (m.error or "")
