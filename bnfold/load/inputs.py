"""Input specs: shapes from the command line, seeded random batches, and user data files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bnfold.errors import InputSpecError


@dataclass(frozen=True)
class InputSpec:
    """Shapes and dtypes of the model's positional inputs."""

    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]

    @classmethod
    def of(cls, inputs: tuple[torch.Tensor, ...]) -> InputSpec:
        return cls(tuple(tuple(t.shape) for t in inputs), tuple(t.dtype for t in inputs))

    def with_batch(self, batch: int) -> InputSpec:
        return InputSpec(tuple((batch, *s[1:]) for s in self.shapes), self.dtypes)

    def describe(self) -> str:
        return ", ".join("x".join(map(str, s)) for s in self.shapes)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``1x3x224x224``) to a tuple of positive ints."""
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise InputSpecError(f"--input-shape {text!r}: expected comma-separated integers like 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise InputSpecError(f"--input-shape {text!r}: every dimension must be a positive integer")
    return dims


def make_inputs(spec: InputSpec, seed: int) -> tuple[torch.Tensor, ...]:
    """A seeded random batch of the spec: standard normal floats, small non-negative integers."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape, dtype in zip(spec.shapes, spec.dtypes):
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype))
        else:
            out.append(torch.randint(0, 2, shape, generator=gen).to(dtype))
    return tuple(out)


def load_data(path: str | Path, count: int) -> tuple[torch.Tensor, ...]:
    """User data from ``.npz``: one array per input, by name in order (or ``x`` / the first array)."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputSpecError(f"--data {path}: not a readable .npz file ({exc})") from None
    keys = [k for k in archive.files if k not in ("y", "labels")]
    if not keys:
        raise InputSpecError(f"--data {path}: holds no input arrays")
    chosen = keys[:count] if len(keys) >= count else keys
    if len(chosen) != count:
        raise InputSpecError(f"--data {path}: the model takes {count} inputs, the file holds {len(keys)}")
    return tuple(torch.from_numpy(np.ascontiguousarray(archive[k])) for k in chosen)
