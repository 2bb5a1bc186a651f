"""Folding BatchNorm at the ONNX graph level, for models that arrive as ``.onnx`` files or as TorchScript
archives exported through the TorchScript ONNX exporter.

    result = fold_onnx(onnx.load("model.onnx"))
    onnx.save(result.model, "folded.onnx")
    for record in result.records:
        print(record.describe())

Each ``BatchNormalization`` (inference form) and each per-channel ``Mul`` → ``Add`` after a layer is
folded forward into the layers that compute its input (Conv, ConvTranspose, Gemm, MatMul, through a bias
``Add``, the branches of an ``Add``, a ``Concat`` or a ``Transpose``), else backward into the unpadded
Conv / Gemm / MatMul layers that read its output, else replaced by a frozen per-channel Mul/Add. The
records say which, and why not.
"""

from bnfold.fold.onnx._pass import OnnxFoldResult, fold_onnx

__all__ = ["OnnxFoldResult", "fold_onnx"]
