"""Graph passes over the written ONNX model, run by :func:`bnfold.export.tidy` on every input format's
output: shape arithmetic folded where the shapes are known, parallel convolutions summed into one."""

from bnfold.export.passes.parallel_convs import MergeParallelConvs, merged_convs
from bnfold.export.passes.shapes import FoldShapeArithmetic

__all__ = ["FoldShapeArithmetic", "MergeParallelConvs", "merged_convs"]
