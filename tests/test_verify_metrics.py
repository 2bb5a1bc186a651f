"""Error metrics of one output, over one batch and aggregated over several."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnfold.verify import Tolerance
from bnfold.verify.metrics import ErrorAccumulator, ErrorHistogram, compare_arrays


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


def decade_counts(errors: np.ndarray) -> dict[str, object]:
    """The expected histogram, by another road: the decade of each error from its log10."""
    errors = errors.ravel()
    nan, zero = np.isnan(errors), errors == 0.0
    rest = errors[~nan & ~zero]
    with np.errstate(divide="ignore"):
        decade = np.floor(np.log10(rest)).astype(np.int64)  # inf -> a huge integer, counted above
    decade[np.isinf(rest)] = 99
    return {
        "counts": [int(np.sum(decade == k)) for k in range(-12, 2)],
        "zeros": int(zero.sum()),
        "below": int(np.sum(decade < -12)),
        "above": int(np.sum(decade >= 2)),
        "nan": int(nan.sum()),
        "total": errors.size,
    }


def test_the_error_histogram_counts_every_decade_over_batches_like_log10_does() -> None:
    rng = np.random.default_rng(1)
    acc = ErrorAccumulator(Tolerance())
    seen = []
    for name, n in (("a", 300), ("b", 1000)):
        reference = rng.normal(size=n)
        errors = 10.0 ** rng.uniform(-14.5, 3.5, size=n)  # spans the bins and past both ends
        errors[:7] = 0.0
        actual = reference + errors
        acc.add(actual, reference, name)
        seen.append(np.abs(actual - reference))  # what was really added, after rounding
    histogram = acc.result().error_histogram
    assert histogram is not None
    got = histogram.to_json()
    assert np.allclose(got["edges"], np.logspace(-12, 2, 15), rtol=1e-12, atol=0)
    assert len(got["counts"]) == 14
    expected = decade_counts(np.concatenate(seen))
    assert {k: got[k] for k in expected} == expected
    assert got["zeros"] >= 14 and got["below"] > 0 and got["above"] > 0  # the data reached every kind of bin
    numpy_counts, _ = np.histogram(np.concatenate(seen), bins=np.logspace(-12, 2, 15))
    assert got["counts"][:-1] == numpy_counts.tolist()[:-1]  # numpy's last bin is closed, ours is not


def test_bin_edges_belong_to_the_bin_above_and_nan_inf_zero_have_their_own() -> None:
    errors = np.array([0.0, 1e-13, 1e-12, 1e-6, 9.99e-7, 10.0, 99.9, 100.0, np.inf, np.nan])
    histogram = ErrorHistogram()
    histogram.add(errors[:4])
    histogram.add(errors[4:])
    got = histogram.to_json()
    assert got["zeros"] == 1 and got["below"] == 1 and got["nan"] == 1 and got["above"] == 2
    counts = got["counts"]
    assert counts[0] == 1  # 1e-12 opens [1e-12, 1e-11)
    assert counts[6] == 1 and counts[5] == 1  # 1e-6 in [1e-6, 1e-5), 9.99e-7 just below it
    assert counts[13] == 2  # 10 and 99.9 in [10, 100)
    assert sum(counts) + got["zeros"] + got["below"] + got["above"] + got["nan"] == got["total"] == errors.size


def test_a_check_with_no_numbers_has_no_histogram() -> None:
    assert compare_arrays(np.zeros((2, 2)), np.zeros((2, 3)), Tolerance()).error_histogram is None
