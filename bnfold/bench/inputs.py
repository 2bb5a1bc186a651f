"""Benchmark inputs: a batch of numpy arrays per batch size, given as a mapping or a factory."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

BatchFactory = Callable[[int], Sequence[np.ndarray]]
InputSource = Mapping[int, Sequence[np.ndarray]] | BatchFactory


def batches_of(inputs: InputSource, batch_sizes: Sequence[int] | None) -> dict[int, tuple[np.ndarray, ...]]:
    """The input arrays for each batch size.

    ``inputs`` maps batch size to arrays, or is a function making the arrays for a batch size. Without
    ``batch_sizes``, a mapping's own keys are used, and a factory is asked for batch 1.
    """
    if isinstance(inputs, Mapping):
        sizes = list(batch_sizes) if batch_sizes is not None else sorted(inputs)
        missing = [b for b in sizes if b not in inputs]
        if missing:
            raise ValueError(f"no benchmark inputs for batch sizes {missing}; given: {sorted(inputs)}")
        return {b: tuple(np.ascontiguousarray(x) for x in inputs[b]) for b in sizes}
    sizes = list(batch_sizes) if batch_sizes is not None else [1]
    return {b: tuple(np.ascontiguousarray(x) for x in inputs(b)) for b in sizes}
