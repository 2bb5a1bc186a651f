"""Input specs: shapes from the command line, seeded random batches, and user data files."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bnfold.errors import InputSpecError, one_line
from bnfold.load.limits import check_zip


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
    example = "comma-separated positive integers like 1,3,224,224"
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    if not any(parts):
        raise InputSpecError(f"--input-shape {text!r}: no dimensions; expected {example}")
    if "" in parts:
        raise InputSpecError(
            f"--input-shape {text!r}: a dimension is missing (separate them by ',' or 'x'); expected {example}"
        )
    dims = []
    for part in parts:
        try:
            dims.append(int(part))
        except ValueError:
            raise InputSpecError(f"--input-shape {text!r}: {part!r} is not an integer; expected {example}") from None
    bad = next((d for d in dims if d <= 0), None)
    if bad is not None:
        raise InputSpecError(f"--input-shape {text!r}: dimension {bad} is not positive; expected {example}")
    return tuple(dims)


def make_inputs(spec: InputSpec, seed: int) -> tuple[torch.Tensor, ...]:
    """A seeded random batch of the spec: standard normal floats, small non-negative integers."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape, dtype in zip(spec.shapes, spec.dtypes, strict=True):
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype))
        else:
            out.append(torch.randint(0, 2, shape, generator=gen).to(dtype))
    return tuple(out)


def fits(dims: Sequence[int | None], shape: tuple[int, ...]) -> bool:
    """Whether a tensor of ``shape`` fits ``dims``: the same rank, every fixed dimension equal."""
    return len(dims) == len(shape) and all(d is None or d == s for d, s in zip(dims, shape, strict=True))


def dims_text(dims: Sequence[int | None]) -> str:
    """An input's declared dimensions (None where free) as ``2x?x8``."""
    return "x".join("?" if d is None else str(d) for d in dims)


NPZ_HINT = "save inputs with numpy.savez(path, x=inputs)"


def load_data(path: str | Path, count: int, option: str = "--data") -> tuple[torch.Tensor, ...]:
    """User data from ``.npz``: one array per input, in the file's order (arrays named y/labels skipped).
    Errors name the file as ``option`` (the command-line option that gave it)."""
    path = Path(path)
    if not path.is_file():
        raise InputSpecError(f"{option} {path}: no such file")
    archive = _open_npz(path, option)
    with archive:
        keys = [k for k in archive.files if k not in ("y", "labels")]
        if len(keys) < count or not keys:
            raise InputSpecError(f"{option} {path}: the model takes {count} inputs, the file holds {len(keys)}")
        try:
            return tuple(torch.from_numpy(np.ascontiguousarray(archive[k])) for k in keys[:count])
        except Exception as exc:  # an object array (pickled), a dtype torch has no match for, a bad member
            raise InputSpecError(
                f"{option} {path}: cannot read its arrays as tensors ({one_line(exc)}); {NPZ_HINT}"
            ) from None


def _open_npz(path: Path, option: str) -> np.lib.npyio.NpzFile:
    hint = NPZ_HINT
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            check_zip(path, archive)  # an .npz is a zip: its declared sizes are checked before any is read
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # not numpy at all, or a pickle (refused)
        raise InputSpecError(f"{option} {path}: not a readable .npz file ({one_line(exc)}); {hint}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputSpecError(f"{option} {path}: a single .npy array, not an .npz archive; {hint}")
    return loaded


DIMENSION_NAMES = ("batch", "height", "width", "length")


def parse_dynamic(text: str) -> tuple[str, ...]:
    """``--dynamic``: ``none``, or comma-separated dimension names (batch, height, width, length) or axes."""
    parts = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    if parts == ("none",):
        return ()
    for part in parts:
        if part not in DIMENSION_NAMES and not part.lstrip("-").isdigit():
            raise InputSpecError(
                f"--dynamic {text!r}: {part!r} is not a dimension; give none, or names from "
                f"{', '.join(DIMENSION_NAMES)} or axis numbers, e.g. batch,height,width"
            )
    if not parts:
        raise InputSpecError("--dynamic needs a value: none, or e.g. batch,height,width")
    return parts


def dynamic_axes(names: tuple[str, ...], inputs: tuple[torch.Tensor, ...]) -> tuple[tuple[int, ...], ...]:
    """The axes ``names`` stand for in each input: batch is 0; height and width the last two axes of an
    image (rank 4 and up); length the last axis of a sequence (rank 3); numbers count from 0 (or from the
    end when negative). A name an input has no axis for is skipped for that input; one no input has an axis
    for is an :class:`InputSpecError` (it would otherwise be dropped without a word, and the batch with it)."""
    for name in names:
        if all(_axis(name, t.dim()) is None for t in inputs):
            ranks = ", ".join(str(t.dim()) for t in inputs)
            raise InputSpecError(
                f"--dynamic {name}: no input of the model has that axis (their ranks: {ranks}); give batch, "
                "height and width (rank 4 and up), length (rank 3) or an axis number below the rank"
            )
    return tuple(tuple(sorted({a for a in (_axis(n, t.dim()) for n in names) if a is not None})) for t in inputs)


def _axis(name: str, rank: int) -> int | None:
    named = {"batch": 0 if rank >= 1 else None, "height": rank - 2 if rank >= 4 else None,
             "width": rank - 1 if rank >= 4 else None, "length": rank - 1 if rank == 3 else None}  # fmt: skip
    if name in named:
        return named[name]
    axis = int(name)
    return axis % rank if -rank <= axis < rank else None
