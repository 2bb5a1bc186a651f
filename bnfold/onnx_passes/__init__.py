"""Graph passes over the written ONNX model, run by :func:`bnfold.export.tidy` on every input format's
output: shape arithmetic folded where the shapes are known."""

from bnfold.onnx_passes.shapes import FoldShapeArithmetic

__all__ = ["FoldShapeArithmetic"]
