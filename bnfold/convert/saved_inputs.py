"""``--save-inputs DIR``: the parity inputs and the reference outputs, to reproduce a result elsewhere.

For the k-th parity batch (the example, the seeded random batches, ``--data``, in that order):

* ``DIR/inputs_<k>.npz``: one array per model input, keyed by the ONNX input name, in input order -- a file
  ``--data`` takes as it is;
* ``DIR/reference_<k>.npz``: the reference's outputs on it (the fp64 original for a PyTorch model, the
  original ONNX model in onnxruntime for an ONNX one), keyed by output name;
* ``DIR/index.json`` (``bnfold.inputs/1``): the reference, the input and output names, and per batch its
  source and files.

DIR is an output: created when missing (its parent must exist), refused when it is a file, and its files
go through the file contract with the run's other outputs. Files an earlier run left there under these
names and no longer part of the set (``inputs_5.npz`` after a run with fewer batches) are removed.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnfold.errors import OutputError

SCHEMA = "bnfold.inputs/1"
INDEX = "index.json"
_NUMBERED = re.compile(r"^(inputs|reference)_\d+\.npz$")


@contextlib.contextmanager
def directory(path: Path | None) -> Iterator[None]:
    """``--save-inputs DIR`` exists for the block: created when missing (and removed again, if still empty,
    when the run stops); :class:`OutputError` when it is not a directory or cannot be made."""
    if path is None:
        yield
        return
    path = Path(path)
    created = False
    if path.exists() and not path.is_dir():
        raise OutputError(f"--save-inputs {path} is a file: give a directory (it is created when missing)")
    if not path.exists():
        if not path.parent.is_dir():
            raise OutputError(f"--save-inputs {path}: the directory {path.parent} does not exist; create it first")
        try:
            path.mkdir()
        except OSError as exc:
            raise OutputError(f"--save-inputs {path}: cannot create it ({exc.strerror})") from None
        created = True
    try:
        yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()  # only when empty
        raise


def planned(path: Path, count: int) -> dict[str, Path]:
    """The files ``--save-inputs`` writes (``count`` batches), by label, and the numbered files an earlier
    run left in ``path`` (staged for removal: they belong to the previous set)."""
    path = Path(path)
    writes = {f"--save-inputs file {INDEX}": path / INDEX}
    for k in range(count):
        for kind in ("inputs", "reference"):
            writes[f"--save-inputs file {kind}_{k}.npz"] = path / f"{kind}_{k}.npz"
    with contextlib.suppress(OSError):
        for old in sorted(path.iterdir()):
            if _NUMBERED.match(old.name) and old not in writes.values():
                writes[f"--save-inputs file {old.name} (an earlier run's)"] = old
    return writes


class InputsWriter:
    """Writes each batch's inputs and reference outputs into the staged ``DIR`` as the reference computes
    them (a callable for :func:`~bnfold.verify.run_parity`'s ``on_reference``), then the index."""

    def __init__(
        self,
        path: Path,
        outputs: Any,
        batches: Sequence[tuple[str, Sequence[np.ndarray]]],
        input_names: Sequence[str],
        output_names: Sequence[str],
    ) -> None:
        self.path, self.outputs, self.batches = Path(path), outputs, batches
        self.input_names = _names(input_names, len(batches[0][1]), "input")
        self.output_names = list(output_names)

    def __call__(self, index: int, reference: list[np.ndarray]) -> None:
        arrays = self.batches[index][1]
        _savez(self._staged(f"inputs_{index}.npz"), dict(zip(self.input_names, arrays, strict=True)))
        self.output_names = _names(self.output_names, len(reference), "output")
        _savez(self._staged(f"reference_{index}.npz"), dict(zip(self.output_names, reference, strict=True)))

    def finish(self, reference_name: str) -> None:
        """Write ``index.json``, once every batch is saved."""
        index = {
            "schema": SCHEMA,
            "reference": reference_name,
            "inputs": self.input_names,
            "outputs": self.output_names,
            "batches": [
                {
                    "source": source,
                    "batch": int(arrays[0].shape[0]) if len(arrays) and arrays[0].ndim else None,
                    "inputs": f"inputs_{k}.npz",
                    "reference": f"reference_{k}.npz",
                }
                for k, (source, arrays) in enumerate(self.batches)
            ],
        }
        self._staged(INDEX).write_text(json.dumps(index, indent=2) + "\n")

    def _staged(self, name: str) -> Path:
        return Path(self.outputs.stage(self.path / name))


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    np.savez(path, **arrays)  # type: ignore[arg-type]


def _names(names: Sequence[str], count: int, kind: str) -> list[str]:
    """``names`` when there is one per array and they are distinct, else ``input_0``, ``input_1``, ..."""
    names = list(names)
    if len(names) == count and len(set(names)) == count and all(names):
        return names
    return [f"{kind}_{i}" for i in range(count)]
