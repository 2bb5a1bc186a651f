"""The maths of summing parallel convolutions into one, exactly, in float64.

Convolutions ``conv_i(x)`` that read the same input with the same stride, dilation, groups and channels
sum to one convolution ``conv(x)`` whose kernel is the sum of theirs, each zero-padded to the largest
kernel ``K``, and whose bias is the sum of theirs. Along one spatial axis, with dilation ``d``, a kernel of
size ``k`` and pads ``(b, e)`` reads input ``o·s − b + j·d`` for tap ``j``; placed at offset ``a`` inside
``K`` taps with pads ``(B, E)`` it reads ``o·s − B + (j + a)·d``, the same input exactly when
``B = b + a·d``, and it gives as many outputs exactly when ``E = e + (K − k − a)·d``. So a set of
convolutions merges when, on every axis, the pads ``(B, E)`` of the kernels of size ``K`` are shared and
every other kernel has an offset ``a = (B − b) / d``, a whole number in ``[0, K − k]``, that gives both.
RepVGG's 3x3 with pad 1 and 1x1 with pad 0 are the centred case (``a = 1``); ACNet's 3x1 and 1x3 beside a
3x3 too.

``auto_pad`` is turned into explicit pads first: ``VALID`` is no padding; ``SAME_UPPER`` / ``SAME_LOWER``
pad ``(ceil(n / s) − 1)·s + (k − 1)·d + 1 − n`` in total (the extra one at the end / at the start), which is
``(k − 1)·d`` whatever the input size ``n`` at stride 1, and needs a known ``n`` otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ConvShape:
    """One convolution's geometry along its spatial axes: kernel sizes, explicit pads (all begins, then
    all ends, as ONNX writes them) and dilations."""

    kernel: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]


@dataclass(frozen=True)
class Placement:
    """Where each kernel sits inside the merged one: the merged kernel size and pads, and per convolution
    its offset along each axis."""

    kernel: tuple[int, ...]
    pads: tuple[int, ...]
    offsets: tuple[tuple[int, ...], ...]


def explicit_pads(
    auto_pad: str, pads: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
    dilations: Sequence[int], sizes: Sequence[int | None],
) -> tuple[int, ...] | str:  # fmt: skip
    """The explicit pads of a convolution, or why they depend on an input size that is not known."""
    rank = len(kernel)
    if auto_pad in ("", "NOTSET"):
        return tuple(pads) if pads else (0,) * 2 * rank
    if auto_pad == "VALID":
        return (0,) * 2 * rank
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return f"auto_pad {auto_pad!r} is not an ONNX padding"
    begins, ends = [], []
    for k, s, d, n in zip(kernel, strides, dilations, sizes, strict=True):
        if s != 1 and n is None:
            return f"auto_pad {auto_pad} at stride {s} pads by the input size, which is not known"
        total = (k - 1) * d if s == 1 else max(((n + s - 1) // s - 1) * s + (k - 1) * d + 1 - n, 0)  # type: ignore[operator]
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return (*begins, *ends)


def placement(shapes: Sequence[ConvShape]) -> Placement | None:
    """How the convolutions' kernels sit in one merged kernel, or None when their pads cannot line up."""
    rank = len(shapes[0].kernel)
    if any(len(s.kernel) != rank or s.dilations != shapes[0].dilations for s in shapes):
        return None
    kernel = tuple(max(s.kernel[i] for s in shapes) for i in range(rank))
    begins, ends, offsets = [], [], [[0] * rank for _ in shapes]
    for i in range(rank):
        d, size = shapes[0].dilations[i], kernel[i]
        largest = {(s.pads[i], s.pads[rank + i]) for s in shapes if s.kernel[i] == size}
        if len(largest) != 1:
            return None
        ((begin, end),) = largest
        for n, s in enumerate(shapes):
            shift, rest = divmod(begin - s.pads[i], d)
            if (
                rest
                or not 0 <= shift <= size - s.kernel[i]
                or end != s.pads[rank + i] + (size - s.kernel[i] - shift) * d
            ):
                return None
            offsets[n][i] = shift
        begins.append(begin)
        ends.append(end)
    return Placement(kernel, (*begins, *ends), tuple(tuple(o) for o in offsets))


def merged_kernel(weights: Sequence[np.ndarray], where: Placement) -> np.ndarray:
    """The sum of the kernels, each zero-padded into the merged size at its offset; float64, cast back to the
    first kernel's dtype."""
    first = weights[0]
    total = np.zeros((*first.shape[:2], *where.kernel), dtype=np.float64)
    for weight, offset in zip(weights, where.offsets, strict=True):
        taps = tuple(slice(o, o + k) for o, k in zip(offset, weight.shape[2:], strict=True))
        total[(slice(None), slice(None)) + taps] += weight.astype(np.float64)
    return total.astype(first.dtype)


def summed_bias(biases: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """The sum of the biases (a missing one is zero); float64, cast back; None when none has one."""
    present = [b for b in biases if b is not None]
    if not present:
        return None
    total: np.ndarray = np.sum([b.astype(np.float64) for b in present], axis=0)
    return total.astype(present[0].dtype)
