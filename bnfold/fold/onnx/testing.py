"""Helpers to test ONNX folds: build small graphs with BatchNormalization nodes, compute BN in float64,
run a model in onnxruntime exactly as written and compare it with a float64 reference
(``assert_numerically_equal``, as onnxscript's ``rewriter/testing.py`` does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper
from onnx import helper as oh


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
    """Raise ``AssertionError`` unless every output of ``model`` matches ``expected`` by verify's own rule
    (:func:`bnfold.verify.assert_allclose_report`, ``expected`` the reference)."""
    from bnfold.verify.compare import assert_allclose_report
    from bnfold.verify.tolerance import Tolerance

    actual = [out.astype(np.float64) for out in run_onnx(model, feeds)]
    reference = [np.asarray(want, np.float64) for want in expected]
    assert_allclose_report(actual, reference, Tolerance(atol=atol, rtol=rtol))


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, list[int | str]],
    outputs: list[str],
    inits: dict[str, np.ndarray],
    elem_type: int = TensorProto.FLOAT,
    opset: int = 17,
) -> onnx.ModelProto:
    """A model whose output types come from shape inference (and no other value_info)."""
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info(name, elem_type, shape) for name, shape in inputs.items()],
        [onnx.ValueInfoProto(name=name) for name in outputs],
        [numpy_helper.from_array(value, name) for name, value in inits.items()],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    typed = onnx.shape_inference.infer_shapes(model).graph.output
    del model.graph.output[:]
    model.graph.output.extend(typed)
    return model


def bn_params(prefix: str, channels: int, gen: np.random.Generator, dtype: type = np.float32) -> dict[str, np.ndarray]:
    return {
        f"{prefix}.scale": gen.standard_normal(channels).astype(dtype),
        f"{prefix}.bias": gen.standard_normal(channels).astype(dtype),
        f"{prefix}.mean": gen.standard_normal(channels).astype(dtype),
        f"{prefix}.var": (gen.random(channels) + 0.5).astype(dtype),
    }


def bn_node(prefix: str, x: str, y: str, eps: float = 1e-5, **attrs: Any) -> onnx.NodeProto:
    """A BatchNormalization named ``prefix`` reading the parameters of :func:`bn_params`."""
    names = [f"{prefix}.{p}" for p in ("scale", "bias", "mean", "var")]
    return oh.make_node("BatchNormalization", [x, *names], [y], name=prefix, epsilon=eps, **attrs)


def bn_ref(x: np.ndarray, params: dict[str, np.ndarray], prefix: str, eps: float = 1e-5) -> np.ndarray:
    """Inference BatchNorm over axis 1, in float64."""
    g, b, m, v = (params[f"{prefix}.{p}"].astype(np.float64) for p in ("scale", "bias", "mean", "var"))
    shape = [1, -1] + [1] * (x.ndim - 2)
    return (x - m.reshape(shape)) / np.sqrt(v.reshape(shape) + eps) * g.reshape(shape) + b.reshape(shape)
