"""``ConvertConfig``: every option of ``bnfold convert`` (and ``verify``, ``bench``), under the option's name.

A field is named as its option, dashes as underscores (``--random-batches`` is ``random_batches``,
``--model`` is ``model``, ``--bench/--no-bench`` is ``bench``); a repeatable option has a plural field
(``input_shapes``, ``tolerances``, ``model_args``, ``batches``). Older names are still accepted as keywords:
``seeds`` for ``random_batches``, ``factory`` for ``model``, ``trust_pickle`` for ``trust_code``.

A value no run could use (an unknown ``exporter``, a negative tolerance, ``threads=0``) raises
:class:`~bnfold.errors.ConfigError` when the config is built, not minutes into a conversion.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any

from bnfold.errors import ConfigError

AFFINE_FORMS = ("batchnorm", "muladd")
EXPORTERS = ("auto", "torchscript", "dynamo")  # bnfold.export.EXPORTERS
EXTERNAL_DATA = ("auto", "always", "never")  # bnfold.export.EXTERNAL_DATA
PROVIDER_NAMES = ("auto", "cpu", "cuda", "gpu")
OPSETS = (7, 30)
MAX_RANDOM_BATCHES = 100

OLD_NAMES = {"seeds": "random_batches", "factory": "model", "trust_pickle": "trust_code"}


@dataclass(frozen=True)
class ConvertConfig:
    """Everything ``bnfold convert`` can be told, field by option (see the module docstring); the CLI fills
    one of these from its options."""

    output: Path | None = None  # -o
    report: Path | None = None
    input_shapes: tuple[tuple[int, ...], ...] = ()  # --input-shape, repeated
    opset: int | None = None  # None: DEFAULT_OPSET for PyTorch models, an ONNX input's own
    atol: float | None = None
    rtol: float | None = None
    tolerances: tuple[tuple[str, float, float], ...] = ()  # --tolerance OUTPUT=ATOL,RTOL, repeated
    data: Path | None = None
    recalibrate: Path | None = None
    bench: bool = True  # --bench/--no-bench
    batches: tuple[int, ...] = ()  # --batch 1,8,32
    providers: tuple[str, ...] = ("auto",)
    threads: int | None = None
    random_batches: int = 1
    affine_form: str = "batchnorm"
    exporter: str = "auto"
    external_data: str = "auto"
    save_optimized: Path | None = None
    model: str | None = None  # --model MODULE:CALLABLE, the code that builds the nn.Module
    model_args: tuple[tuple[str, Any], ...] = ()  # --model-arg NAME=VALUE, repeated
    dynamic: tuple[str, ...] | None = None  # --dynamic: dimension names or axes; None: as stored, else batch
    input_names: tuple[str, ...] = ()  # --input-names: the ONNX graph's input names (default: the model's)
    output_names: tuple[str, ...] = ()  # --output-names
    trust_code: bool = False
    save_inputs: Path | None = None  # --save-inputs DIR: the parity inputs and reference outputs as .npz
    write_reports: bool = True  # API only: False writes the ONNX file alone
    seeds: InitVar[int | None] = None  # the older name of random_batches
    factory: InitVar[str | None] = None  # the older name of model
    trust_pickle: InitVar[bool] = False  # the older name of trust_code

    def __post_init__(self, seeds: int | None, factory: str | None, trust_pickle: bool) -> None:
        if seeds is not None:
            _take_old_name(self, "seeds", seeds, default=1)
        if factory is not None:
            _take_old_name(self, "factory", factory, default=None)
        if trust_pickle:
            object.__setattr__(self, "trust_code", True)
        check_config(self)


def _take_old_name(config: ConvertConfig, old: str, value: Any, default: Any) -> None:
    new = OLD_NAMES[old]
    current = getattr(config, new)
    if current != default and current != value:
        raise ConfigError(
            f"{old}={value!r} and {new}={current!r} disagree: {old} is the older name of {new}; give {new} alone"
        )
    object.__setattr__(config, new, value)


def check_config(config: ConvertConfig) -> None:
    """Raise :class:`ConfigError` for a value no run could use, naming the option it belongs to."""
    _choice("--affine-form", config.affine_form, AFFINE_FORMS)
    _choice("--exporter", config.exporter, EXPORTERS)
    _choice("--external-data", config.external_data, EXTERNAL_DATA)
    _providers(config.providers)
    for label, value in (("--atol", config.atol), ("--rtol", config.rtol)):
        if value is not None:
            _tolerance(label, value)
    for name, atol, rtol in config.tolerances:
        for value in (atol, rtol):
            _tolerance(f"--tolerance {name}={atol},{rtol}", value)
    _int_range("--random-batches", config.random_batches, 0, MAX_RANDOM_BATCHES)
    if config.threads is not None:
        _int_range("--threads", config.threads, 1, None)
    if config.opset is not None:
        _int_range("--opset", config.opset, *OPSETS)
    for size in config.batches:
        _int_range("--batch", size, 1, None)
    for shape in config.input_shapes:
        if any(not _is_int(d) or d < 1 for d in shape):
            raise ConfigError(f"--input-shape {','.join(map(str, shape))}: dimensions are integers >= 1")


def _choice(option: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{option} {value!r}: expected one of {', '.join(choices)}")


def _providers(providers: tuple[str, ...]) -> None:
    if isinstance(providers, str) or not providers:
        raise ConfigError(f"--providers {providers!r}: give a tuple of names, e.g. ('auto',) or ('cpu', 'cuda')")
    for item in providers:
        for name in str(item).split(","):
            name = name.strip()
            if name.lower() not in PROVIDER_NAMES and not name.endswith("ExecutionProvider"):
                raise ConfigError(
                    f"--providers {name!r}: expected auto, cpu, cuda or an onnxruntime provider "
                    "name (CUDAExecutionProvider)"
                )


def _tolerance(label: str, value: Any) -> None:
    if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{label}: a tolerance is a finite number >= 0, not {value!r}")


def _int_range(option: str, value: Any, low: int, high: int | None) -> None:
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{option} {value!r}: expected an integer {bound}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
