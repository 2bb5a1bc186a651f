"""Tolerances and the one pass rule that verify and the tests share.

The rule is numpy's ``allclose`` with the reference on the right, element by element::

    |actual - reference| <= atol + rtol * |reference|

and a NaN anywhere (in either array) fails, as does a shape that differs from the reference's. Infinities
pass only where both sides hold the same infinity.

Default tolerances scale with the dtype of the model being checked (and, in the parity matrix, give way to
the fp32 noise yardstick :data:`NOISE_RULE` where a model's own fp32 error exceeds them):

=========  ========  ========
dtype      atol      rtol
=========  ========  ========
float64    1e-9      1e-7
float32    1e-4      1e-3
float16    1e-2      1e-2
bfloat16   5e-2      5e-2
=========  ========  ========
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RULE = "|a - b| <= atol + rtol * |b| (b = reference); NaN fails"
# With default tolerances a check also passes when it adds no more error than fp32 arithmetic of this model
# makes by itself: the original fp32 model's own max error against fp64 on that output is the yardstick.
NOISE_FACTOR = 4.0
NOISE_RULE = (
    f"{RULE}; with default tolerances a check also passes when max |a - b| <= {NOISE_FACTOR:g} x the original "
    "model's own max abs error (in fp32; a float16 or bfloat16 model in its own dtype) against the fp64 "
    "reference on that output (noise_bound)"
)

_DEFAULTS: dict[str, tuple[float, float]] = {
    "float64": (1e-9, 1e-7),
    "float32": (1e-4, 1e-3),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
}


@dataclass(frozen=True)
class Tolerance:
    """Absolute and relative tolerance of the allclose rule (see the module docstring)."""

    atol: float = 1e-4
    rtol: float = 1e-3

    @classmethod
    def for_dtype(cls, dtype: Any) -> Tolerance:
        """The default tolerance for a model computing in ``dtype`` (numpy, torch, or a name: "float16")."""
        name = _dtype_name(dtype)
        if name not in _DEFAULTS:
            raise ValueError(f"no default tolerance for dtype {name!r}; pass a Tolerance(atol, rtol)")
        atol, rtol = _DEFAULTS[name]
        return cls(atol, rtol)

    def within(self, actual: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Elementwise pass mask of the allclose rule; NaN on either side is a failure."""
        a = np.asarray(actual, dtype=np.float64)
        b = np.asarray(reference, dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            ok = np.abs(a - b) <= self.atol + self.rtol * np.abs(b)
        same_inf = np.isinf(a) & (a == b)
        mask: np.ndarray = (ok | same_inf) & ~np.isnan(a) & ~np.isnan(b)
        return mask

    def describe(self) -> str:
        return f"atol {self.atol:.1e}, rtol {self.rtol:.1e}"


OutputKey = str | int


@dataclass(frozen=True)
class Tolerances:
    """A default tolerance plus per-output overrides, keyed by output name or index."""

    default: Tolerance
    overrides: Mapping[OutputKey, Tolerance] | None = None

    def for_output(self, index: int, name: str | None = None) -> Tolerance:
        """The override for this output (by name first, then index), else the default."""
        overrides = self.overrides or {}
        if name is not None and name in overrides:
            return overrides[name]
        return overrides.get(index, self.default)


def check_tolerance(label: str, value: float) -> float:
    """``value`` as a tolerance (finite, not negative), or :class:`~bnfold.errors.InputSpecError` naming
    ``label`` (the option it came from)."""
    from bnfold.errors import InputSpecError

    if not np.isfinite(value) or value < 0:
        raise InputSpecError(f"{label}: a tolerance is a finite number >= 0, not {value}")
    return value


def check_output_keys(keys: Sequence[OutputKey], names: Sequence[str]) -> None:
    """Each per-output tolerance names one of the model's outputs (``names``), by name or index."""
    from bnfold.errors import InputSpecError

    for key in keys:
        text = str(key)
        if text in names or (text.isdigit() and int(text) < len(names)):
            continue
        listed = ", ".join(f"{i} = {name!r}" for i, name in enumerate(names))
        raise InputSpecError(f"--tolerance {key}=...: the model has no output {key!r}; its outputs are {listed}")


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, str):
        return dtype.removeprefix("torch.")
    text = str(dtype)
    if text.startswith("torch."):
        return text.removeprefix("torch.")
    return str(np.dtype(dtype).name)


def as_arrays(value: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """One array or a sequence of arrays, as a list of arrays."""
    if isinstance(value, np.ndarray):
        return [value]
    return [np.asarray(v) for v in value]
