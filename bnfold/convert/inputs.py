"""The example inputs a run folds, exports and checks with: ``--input-shape`` wins over the ones stored with
the model, checked against an ONNX graph's declared inputs and against what bnfold makes inputs of."""

from __future__ import annotations

import math
from typing import Any

import torch

from bnfold.convert.config import ConvertConfig
from bnfold.errors import InputSpecError, one_line
from bnfold.load import InputSpec, LoadedModel, make_inputs
from bnfold.load.inputs import dims_text, fits


def resolve_inputs(loaded: LoadedModel, config: ConvertConfig) -> tuple[torch.Tensor, ...]:
    """The example inputs: ``--input-shape`` wins over the ones stored with the model."""
    stored = loaded.example_inputs
    if config.input_shapes:
        check_shape_sizes(config.input_shapes)
        if loaded.onnx_model is not None:
            check_onnx_shapes(loaded.onnx_model, config.input_shapes)
        if loaded.exported is not None:
            check_program_shapes(loaded.exported, config.input_shapes)
        same_count = stored is not None and len(stored) == len(config.input_shapes)
        dtypes = tuple(t.dtype for t in stored) if same_count else (torch.float32,) * len(config.input_shapes)  # type: ignore[union-attr]
        try:
            return make_inputs(InputSpec(config.input_shapes, dtypes), seed=0)
        except (MemoryError, RuntimeError, OverflowError) as exc:  # torch's allocator: RuntimeError
            raise InputSpecError(
                f"cannot make inputs of shape {InputSpec(config.input_shapes, dtypes).describe()} "
                f"({one_line(exc)}): give a smaller --input-shape"
            ) from exc
    if stored:
        return tuple(stored)
    raise InputSpecError(
        f"{loaded.path or 'the model'} stores no example inputs: give the input shape, e.g. --input-shape 1,3,224,224"
    )


MAX_INPUT_ELEMENTS = 1 << 28
"""``--input-shape`` up to this many elements per input (1 GiB of float32): bnfold makes several batches of
that shape and runs the model on each, so a larger one is a typo, not a model input."""


def check_shape_sizes(shapes: tuple[tuple[int, ...], ...]) -> None:
    """Each ``--input-shape`` is small enough to allocate (and to count in 64 bits)."""
    for shape in shapes:
        elements = math.prod(shape)
        if elements > MAX_INPUT_ELEMENTS:
            given = "x".join(map(str, shape))
            raise InputSpecError(
                f"--input-shape {given}: {elements:.3g} elements, more than bnfold makes inputs of "
                f"({MAX_INPUT_ELEMENTS:.3g}); give the shape of one real batch"
            )


def program_dims(program: torch.export.ExportedProgram) -> list[list[int | None]] | None:
    """The dimensions of each input a torch.export program takes, None where dynamic (its module refuses
    any other size: torch.export guards them); None when an input is not a tensor."""
    users = set(program.graph_signature.user_inputs)
    values = [n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder" and n.name in users]
    if not all(isinstance(v, torch.Tensor) for v in values):
        return None  # inputs other than tensors: the trace says what does not fit
    return [[d if isinstance(d, int) else None for d in v.shape] for v in values]


def check_program_shapes(program: torch.export.ExportedProgram, shapes: tuple[tuple[int, ...], ...]) -> None:
    """``--input-shape`` against a torch.export program's inputs: count, rank and the sizes it fixed."""
    declared = program_dims(program)
    if declared is None:
        return
    if len(declared) != len(shapes):
        raise InputSpecError(
            f"the model takes {len(declared)} input(s), --input-shape gave {len(shapes)}: give it once per input"
        )
    for index, (dims, shape) in enumerate(zip(declared, shapes, strict=True)):
        if not fits(dims, shape):
            given, expected = "x".join(map(str, shape)), dims_text(dims)
            fitting = ",".join(str(d) if d is not None else str(s) for d, s in zip(dims, shape, strict=False))
            hint = f"give --input-shape {fitting}, or " if len(dims) == len(shape) else ""
            raise InputSpecError(
                f"--input-shape {given} does not fit input {index} of the archive, exported for shape {expected} "
                f"(? dynamic); {hint}export it with those dimensions dynamic (torch.export dynamic_shapes)"
            )


def check_onnx_shapes(model: Any, shapes: tuple[tuple[int, ...], ...]) -> None:
    """``--input-shape`` against an ONNX graph's declared inputs: count, rank and fixed sizes."""
    stored = {t.name for t in model.graph.initializer}
    declared = [v for v in model.graph.input if v.name not in stored]
    if len(declared) != len(shapes):
        raise InputSpecError(
            f"the model takes {len(declared)} input(s), --input-shape gave {len(shapes)}: give it once per input"
        )
    for value, shape in zip(declared, shapes, strict=True):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if not fits(dims, shape):
            given = "x".join(map(str, shape))
            raise InputSpecError(f"--input-shape {given} does not fit input '{value.name}' of shape {dims_text(dims)}")
