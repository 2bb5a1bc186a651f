"""Error metrics of one output against a reference, accumulated over any number of batches.

All arithmetic is in float64. Over several batches the maxima are maxima over batches, the means and
ratios are weighted by element (or row) count, and the cosine is that of the concatenated outputs.

* ``max_abs_err``: max |a - b|.
* ``max_rel_err``: max |a - b| / max(|b|, 1e-6 * max|b|, tiny), where ``max|b|`` is over the batch's whole
  reference output and ``tiny`` the smallest normal float64: the floor keeps elements where the reference
  is (nearly) zero from turning rounding noise into huge relative errors.
* ``mean_abs_err``: mean |a - b|.
* ``mismatch_ratio``: fraction of elements failing the tolerance's allclose rule.
* ``cosine``: cosine similarity of the flattened outputs (1.0 when both are all zeros).
* ``top1_agreement`` / ``top5_agreement``: only for classifier-like outputs (2-D, N x K with K >= 2,
  resp. K >= 5): the fraction of rows whose argmax (resp. set of five largest) equals that of the
  *predictions* array, normally the original fp32 model's output.
* ``error_histogram``: how many elements have |a - b| in each decade from 1e-12 to 1e2
  (:class:`ErrorHistogram`); the bins are fixed, so histograms of different candidates and runs compare.

A NaN anywhere makes the errors NaN and the check fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bnfold.verify.tolerance import Tolerance

_TINY = float(np.finfo(np.float64).tiny)
REL_FLOOR = 1e-6
HISTOGRAM_EDGES: tuple[float, ...] = tuple(float(f"1e{k}") for k in range(-12, 3))


class ErrorHistogram:
    """Counts of absolute errors in fixed decades, added batch by batch without keeping the arrays.

    ``counts[i]`` is the number of errors in ``[edges[i], edges[i + 1])`` for the :data:`HISTOGRAM_EDGES`
    1e-12, 1e-11, ..., 1e2; besides them ``zeros`` (exactly 0), ``below`` (under 1e-12 but not 0),
    ``above`` (1e2 or more, infinity too) and ``nan``. Every element is in exactly one of these.
    """

    def __init__(self) -> None:
        self._bins = np.zeros(len(HISTOGRAM_EDGES) + 1, dtype=np.int64)  # below, the decades, above
        self.zeros = 0
        self.nan = 0

    def add(self, errors: np.ndarray) -> None:
        """Count one batch of absolute errors (non-negative or NaN)."""
        flat = np.asarray(errors, dtype=np.float64).ravel()
        zeros, nan = int(np.count_nonzero(flat == 0.0)), int(np.count_nonzero(np.isnan(flat)))
        # NaN sorts past every edge, zero before the first: both are taken out of the end bins again
        index = np.searchsorted(HISTOGRAM_EDGES, flat, side="right")
        self._bins += np.bincount(index, minlength=len(self._bins))
        self._bins[0] -= zeros
        self._bins[-1] -= nan
        self.zeros += zeros
        self.nan += nan

    @property
    def counts(self) -> list[int]:
        return [int(n) for n in self._bins[1:-1]]

    @property
    def total(self) -> int:
        return int(self._bins.sum()) + self.zeros + self.nan

    def to_json(self) -> dict[str, Any]:
        """``{"edges", "counts", "zeros", "below", "above", "nan", "total"}``."""
        return {
            "edges": list(HISTOGRAM_EDGES),
            "counts": self.counts,
            "zeros": self.zeros,
            "below": int(self._bins[0]),
            "above": int(self._bins[-1]),
            "nan": self.nan,
            "total": self.total,
        }


@dataclass
class OutputMetrics:
    """The comparison of one output; truthy when it passes."""

    max_abs_err: float | None
    max_rel_err: float | None
    mean_abs_err: float | None
    mismatch_ratio: float | None
    cosine: float | None
    top1_agreement: float | None
    top5_agreement: float | None
    passed: bool
    nan_count: int = 0
    worst_batch: str | None = None
    error: str | None = None
    error_histogram: ErrorHistogram | None = None

    def __bool__(self) -> bool:
        return self.passed


class ErrorAccumulator:
    """Adds up the errors of one output batch by batch; :meth:`result` gives the :class:`OutputMetrics`."""

    def __init__(self, tolerance: Tolerance) -> None:
        self.tolerance = tolerance
        self.elements = 0
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.sum_abs = 0.0
        self.mismatches = 0
        self.dot = self.norm_a = self.norm_b = 0.0
        self.rows = self.top1_hits = 0
        self.top5_rows = self.top5_hits = 0
        self.nan_count = 0
        self.worst_batch: str | None = None
        self.error: str | None = None
        self.histogram = ErrorHistogram()

    def add(
        self, actual: np.ndarray, reference: np.ndarray, batch: str = "", predictions: np.ndarray | None = None
    ) -> None:
        """Account one batch: ``actual`` against ``reference``; top-k agreement against ``predictions``."""
        a = np.asarray(actual, dtype=np.float64)
        b = np.asarray(reference, dtype=np.float64)
        if a.shape != b.shape:
            self.error = self.error or f"shape {a.shape} != reference shape {b.shape} (batch {batch})"
            return
        self.nan_count += int(np.isnan(a).sum())
        diff = np.where(np.isinf(a) & (a == b), 0.0, np.abs(a - b))
        self._add_errors(diff, b, batch)
        self.mismatches += int(a.size - np.count_nonzero(self.tolerance.within(a, b)))
        self.dot += float(np.sum(a * b))
        self.norm_a += float(np.sum(a * a))
        self.norm_b += float(np.sum(b * b))
        self._add_agreement(a, b if predictions is None else np.asarray(predictions, dtype=np.float64))

    def _add_errors(self, diff: np.ndarray, b: np.ndarray, batch: str) -> None:
        if diff.size == 0:
            return
        batch_max = float(np.max(diff))
        if self.worst_batch is None or _worse(batch_max, self.max_abs):
            self.max_abs, self.worst_batch = batch_max, batch
        floor = max(REL_FLOOR * float(np.max(np.abs(b))), _TINY)
        with np.errstate(invalid="ignore", over="ignore"):  # an all-zero reference: infinite rel error
            rel = float(np.max(diff / np.maximum(np.abs(b), floor)))
        self.max_rel = rel if _worse(rel, self.max_rel) else self.max_rel
        self.sum_abs += float(np.sum(diff))
        self.elements += diff.size
        self.histogram.add(diff)

    def _add_agreement(self, a: np.ndarray, predictions: np.ndarray) -> None:
        if a.ndim != 2 or a.shape[1] < 2 or predictions.shape != a.shape:
            return
        self.rows += a.shape[0]
        self.top1_hits += int(np.sum(np.argmax(a, axis=1) == np.argmax(predictions, axis=1)))
        if a.shape[1] >= 5:
            self.top5_rows += a.shape[0]
            same = np.all(_top5(a) == _top5(predictions), axis=1)
            self.top5_hits += int(np.sum(same))

    def result(self) -> OutputMetrics:
        """The metrics over every batch added so far."""
        if self.error is not None:
            return OutputMetrics(None, None, None, None, None, None, None, False, error=self.error)
        n = max(self.elements, 1)
        metrics = OutputMetrics(
            max_abs_err=self.max_abs,
            max_rel_err=self.max_rel,
            mean_abs_err=self.sum_abs / n,
            mismatch_ratio=self.mismatches / n,
            cosine=self._cosine(),
            top1_agreement=self.top1_hits / self.rows if self.rows else None,
            top5_agreement=self.top5_hits / self.top5_rows if self.top5_rows else None,
            passed=self.mismatches == 0 and self.nan_count == 0 and not np.isnan(self.max_abs),
            nan_count=self.nan_count,
            worst_batch=self.worst_batch,
            error_histogram=self.histogram,
        )
        return metrics

    def _cosine(self) -> float:
        if self.norm_a == 0.0 and self.norm_b == 0.0:
            return 1.0
        if self.norm_a == 0.0 or self.norm_b == 0.0:
            return 0.0
        return float(self.dot / (np.sqrt(self.norm_a) * np.sqrt(self.norm_b)))


def _worse(new: float, old: float) -> bool:
    """Whether ``new`` replaces ``old`` as the maximum; a NaN, once seen, stays."""
    if np.isnan(old):
        return False
    return bool(np.isnan(new) or new > old)


def _top5(x: np.ndarray) -> np.ndarray:
    return np.sort(np.argpartition(-x, 4, axis=1)[:, :5], axis=1)


def compare_arrays(
    actual: np.ndarray, reference: np.ndarray, tolerance: Tolerance, predictions: np.ndarray | None = None
) -> OutputMetrics:
    """The metrics of one array against its reference (a single batch)."""
    acc = ErrorAccumulator(tolerance)
    acc.add(actual, reference, predictions=predictions)
    return acc.result()
