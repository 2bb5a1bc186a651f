"""The one tolerance helper verify and the tests share: compare outputs, or assert they agree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bnfold.verify.metrics import OutputMetrics, compare_arrays
from bnfold.verify.tolerance import Tolerance, as_arrays


@dataclass
class Comparison:
    """Metrics of each output of ``actual`` against ``expected``; truthy when every output passes."""

    tolerance: Tolerance
    outputs: list[OutputMetrics]
    error: str | None = None

    def __bool__(self) -> bool:
        return self.error is None and all(self.outputs)

    def describe(self) -> str:
        """A multi-line account, as an assertion message."""
        if self.error:
            return self.error
        lines = [f"outputs compared with {self.tolerance.describe()}:"]
        for k, m in enumerate(self.outputs):
            verdict = "ok" if m else "FAIL"
            detail = m.error or (
                f"max abs {m.max_abs_err:.3e}, max rel {m.max_rel_err:.3e}, "
                f"mismatch {m.mismatch_ratio:.2%}, {m.nan_count} NaN"
            )
            lines.append(f"  output {k}: {verdict}: {detail}")
        return "\n".join(lines)


def compare_outputs(
    actual: np.ndarray | Sequence[np.ndarray],
    expected: np.ndarray | Sequence[np.ndarray],
    tolerance: Tolerance | None = None,
) -> Comparison:
    """Compare one array or a sequence of outputs with the allclose rule (``expected`` is the reference)."""
    tolerance = tolerance or Tolerance.for_dtype("float32")
    a, b = as_arrays(actual), as_arrays(expected)
    if len(a) != len(b):
        return Comparison(tolerance, [], f"{len(a)} outputs, expected {len(b)}")
    return Comparison(tolerance, [compare_arrays(x, y, tolerance) for x, y in zip(a, b, strict=True)])


def assert_allclose_report(
    actual: np.ndarray | Sequence[np.ndarray],
    expected: np.ndarray | Sequence[np.ndarray],
    tolerance: Tolerance | None = None,
) -> Comparison:
    """Raise ``AssertionError`` with per-output metrics unless ``actual`` matches ``expected``."""
    result = compare_outputs(actual, expected, tolerance)
    if not result:
        raise AssertionError(result.describe())
    return result
