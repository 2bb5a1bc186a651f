"""Helpers to check an ONNX fold numerically: run a model in onnxruntime exactly as written, and compare
against a float64 reference (``assert_numerically_equal``, as onnxscript's ``rewriter/testing.py`` does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort


def run_onnx(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs of ``model`` on ``feeds``, with onnxruntime's own graph rewrites turned off."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, dict(feeds))]


def assert_numerically_equal(
    model: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    expected: Sequence[np.ndarray],
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> None:
    """Raise ``AssertionError`` unless every output of ``model`` matches ``expected`` within tolerance."""
    actual = run_onnx(model, feeds)
    assert len(actual) == len(expected), f"{len(actual)} outputs, expected {len(expected)}"
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        np.testing.assert_allclose(
            got.astype(np.float64),
            np.asarray(want, np.float64),
            rtol=rtol,
            atol=atol,
            err_msg=f"output {index} of the folded model",
        )
