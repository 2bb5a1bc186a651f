"""The options the commands share, and how each value is read: every option lands in the command's
``**options`` under the name of its :class:`~bnfold.convert.ConvertConfig` field."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from bnfold.errors import InputSpecError


def _shapes(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    from bnfold.load import parse_shape

    return tuple(parse_shape(v) for v in values)


def _batches(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        sizes = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise InputSpecError(f"--batch {value!r}: expected comma-separated integers like 1,8,32") from None
    if any(b <= 0 for b in sizes):
        raise InputSpecError(f"--batch {value!r}: batch sizes must be positive")
    return sizes


def _tolerances(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[tuple[str, float, float], ...]:
    from bnfold.verify.tolerance import check_tolerance

    out = []
    for text in values:
        name, _, numbers = text.partition("=")
        try:
            atol, rtol = (float(v) for v in numbers.split(","))
        except ValueError:
            raise InputSpecError(f"--tolerance {text!r}: expected OUTPUT=ATOL,RTOL, e.g. logits=1e-4,1e-3") from None
        if not name.strip():
            raise InputSpecError(f"--tolerance {text!r}: name the output (or give its index) before '='")
        for value in (atol, rtol):
            check_tolerance(f"--tolerance {text}", value)
        out.append((name, atol, rtol))
    return tuple(out)


def _tolerance(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    from bnfold.verify.tolerance import check_tolerance

    return None if value is None else check_tolerance(f"--{param.name} {value}", value)


def _dynamic(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    from bnfold.load.inputs import parse_dynamic

    return None if value is None else parse_dynamic(value)


def _names(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...]:
    names = tuple(n.strip() for n in (value or "").split(",") if n.strip())
    if value is not None and not names:
        raise InputSpecError(f"--{_param.name.replace('_', '-') if _param.name else 'names'} needs names, e.g. x,mask")
    return names


def _providers(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


Command = TypeVar("Command", bound=Callable[..., Any])


def providers_option(help_text: str) -> Callable[[Command], Command]:
    """--providers, as the tuple of names the config takes."""
    return click.option("--providers", default="auto", show_default=True, callback=_providers, help=help_text)


@contextlib.contextmanager
def progress_drawn(quiet: bool) -> Iterator[Any]:
    """Progress drawn on stderr (:class:`bnfold.terminal.TerminalProgress`), or, quiet, nothing at all: the
    process's stdout and stderr point at /dev/null for the run (an ``Error:`` line is printed after it)."""
    from bnfold.terminal import TerminalProgress, silenced

    if quiet:
        with silenced():
            yield None
        return
    drawer = TerminalProgress()
    try:
        yield drawer
    finally:
        drawer.close()


def model_option(command: Any) -> Any:
    """--model and --model-arg: the code that builds the architecture for a weights file, and its arguments."""
    command = click.option(
        "--model-arg",
        "model_args",
        multiple=True,
        metavar="NAME=VALUE",
        callback=_model_args,
        help="Keyword argument for the --model callable (repeatable; a Python literal, else a string).",
    )(command)
    return click.option(
        "--model",
        metavar="MODULE:CALLABLE",
        help="Code that builds the nn.Module for a state_dict/safetensors/checkpoint file.",
    )(command)


def _model_args(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    from bnfold.load.factory import parse_model_args

    return tuple(parse_model_args(values).items())


shape_option = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    callback=_shapes,
    metavar="1,3,224,224",
    help="Shape of one input (repeat per input). Overrides the example inputs stored in the model.",
)
trust_option = click.option(
    "--trust-code",
    "--trust-pickle",
    "trust_code",
    is_flag=True,
    help="Allow formats that carry code (TorchScript archives, pickled modules) and lift the loading gate: "
    "code from the file may run. Only for files you trust.",
)
quiet_option = click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Print nothing (an Error: line aside): no progress, summary or library log lines; the exit code tells.",
)


PARITY_OPTIONS = [
    click.option(
        "--atol",
        type=float,
        callback=_tolerance,
        help="Absolute tolerance for parity [default: by dtype, 1e-4 for float32].",
    ),
    click.option(
        "--rtol",
        type=float,
        callback=_tolerance,
        help="Relative tolerance for parity [default: by dtype, 1e-3 for float32].",
    ),
    click.option(
        "--tolerance",
        "tolerances",
        multiple=True,
        callback=_tolerances,
        metavar="OUTPUT=ATOL,RTOL",
        help="Tolerance for one output (by name or index); repeatable.",
    ),
    click.option(
        "--data",
        type=click.Path(path_type=Path),
        help="Extra parity inputs from .npz (one array per input; labels 'y' ignored).",
    ),
    click.option(
        "--save-inputs",
        type=click.Path(path_type=Path),
        metavar="DIR",
        help="Write the parity inputs (DIR/inputs_<k>.npz, usable as --data) and the reference outputs "
        "(DIR/reference_<k>.npz) with DIR/index.json; DIR is created when missing.",
    ),
    click.option(
        "--random-batches",
        type=click.IntRange(0, 100),
        default=1,
        show_default=True,
        help="Seeded random batches checked besides the example (and --data).",
    ),
]
"""--atol, --rtol, --tolerance, --data, --save-inputs and --random-batches, in the order --help lists them."""


def parity_options(command: Any) -> Any:
    """--atol, --rtol, --tolerance, --data, --save-inputs and --random-batches: the parity settings convert and
    verify share."""
    for option in reversed(PARITY_OPTIONS):
        command = option(command)
    return command
