"""``ConvertConfig``: every option of ``bnfold convert`` (and ``verify``, ``bench``, ``inspect``), under its name.

A field is named as its option, dashes as underscores (``--random-batches`` is ``random_batches``,
``--model`` is ``model``, ``--bench/--no-bench`` is ``bench``); a repeatable option has a plural field
(``input_shapes``, ``tolerances``, ``model_args``, ``batches``). Older names are still accepted as keywords:
``seeds`` for ``random_batches``, ``factory`` for ``model``, ``trust_pickle`` for ``trust_code``.

Each stage reads its own small config, a view of the options it uses: :class:`LoadConfig`,
:class:`ExportConfig`, :class:`ParityConfig` and :class:`BenchConfig` (``config.load``, ``config.export``,
``config.parity``, ``config.timing``; ``config.bench`` is the ``--bench/--no-bench`` switch). Each checks its
values when it is built, so a value no run could use (an unknown ``exporter``, a negative tolerance,
``threads=0``) raises :class:`~bnfold.errors.ConfigError` when the config is built, not minutes into a
conversion.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from bnfold.errors import ConfigError

AffineForm = Literal["batchnorm", "muladd"]
Exporter = Literal["auto", "torchscript", "dynamo"]  # bnfold.export.EXPORTERS
ExternalData = Literal["auto", "always", "never"]  # bnfold.export.EXTERNAL_DATA
AFFINE_FORMS: tuple[str, ...] = get_args(AffineForm)
EXPORTERS: tuple[str, ...] = get_args(Exporter)
EXTERNAL_DATA: tuple[str, ...] = get_args(ExternalData)
PROVIDER_NAMES = ("auto", "cpu", "cuda", "gpu")
OPSETS = (7, 30)
MAX_RANDOM_BATCHES = 100

OLD_NAMES = {"seeds": "random_batches", "factory": "model", "trust_pickle": "trust_code"}
UNSET: dict[str, Any] = {"seeds": None, "factory": None, "trust_pickle": False}  # the older names' defaults

Shapes = tuple[tuple[int, ...], ...]
OutputTolerances = tuple[tuple[str | int, float, float], ...]


@dataclass(frozen=True)
class LoadConfig:
    """How the model is read and what it is fed: ``--input-shape``, ``--model``, ``--model-arg``, ``--trust-code``."""

    input_shapes: Shapes = ()
    model: str | None = None
    model_args: tuple[tuple[str, Any], ...] = ()
    trust_code: bool = False

    def __post_init__(self) -> None:
        for shape in self.input_shapes:
            if any(not _is_int(d) or d < 1 for d in shape):
                raise ConfigError(f"--input-shape {','.join(map(str, shape))}: dimensions are integers >= 1")


@dataclass(frozen=True)
class ExportConfig:
    """How the model is folded and written: the fold's options and the exporter's."""

    opset: int | None = None  # None: DEFAULT_OPSET for PyTorch models, an ONNX input's own
    dynamic: tuple[str, ...] | None = None  # dimension names or axes; None: as stored, else batch
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    affine_form: AffineForm = "batchnorm"
    exporter: Exporter = "auto"
    external_data: ExternalData = "auto"
    recalibrate: Path | None = None

    def __post_init__(self) -> None:
        _choice("--affine-form", self.affine_form, AFFINE_FORMS)
        _choice("--exporter", self.exporter, EXPORTERS)
        _choice("--external-data", self.external_data, EXTERNAL_DATA)
        if self.opset is not None:
            _int_range("--opset", self.opset, *OPSETS)


@dataclass(frozen=True)
class ParityConfig:
    """How parity is checked: tolerances, the input batches, where the runs happen."""

    atol: float | None = None
    rtol: float | None = None
    tolerances: OutputTolerances = ()  # (output name or index, atol, rtol)
    data: Path | None = None
    random_batches: int = 1
    save_inputs: Path | None = None
    providers: tuple[str, ...] = ("auto",)
    threads: int | None = None

    def __post_init__(self) -> None:
        for label, value in (("--atol", self.atol), ("--rtol", self.rtol)):
            if value is not None:
                _tolerance(label, value)
        for name, atol, rtol in self.tolerances:
            for value in (atol, rtol):
                _tolerance(f"--tolerance {name}={atol},{rtol}", value)
        _int_range("--random-batches", self.random_batches, 0, MAX_RANDOM_BATCHES)
        _runtime(self.providers, self.threads)

    @property
    def batch_count(self) -> int:
        """How many parity batches a run checks: the example, the random ones, ``--data``."""
        return 1 + int(self.random_batches) + (self.data is not None)


@dataclass(frozen=True)
class BenchConfig:
    """How latency is measured: the batch sizes, the providers, the threads."""

    batches: tuple[int, ...] = ()
    providers: tuple[str, ...] = ("auto",)
    threads: int | None = None

    def __post_init__(self) -> None:
        for size in self.batches:
            _int_range("--batch", size, 1, None)
        _runtime(self.providers, self.threads)


@dataclass(frozen=True)
class ConvertConfig:
    """Everything ``bnfold convert`` can be told, field by option (see the module docstring); the CLI fills
    one of these from its options. ``load``, ``export``, ``parity`` and ``timing`` are the stages' views."""

    output: Path | None = None  # -o
    report: Path | None = None
    input_shapes: Shapes = ()  # --input-shape, repeated
    opset: int | None = None  # None: DEFAULT_OPSET for PyTorch models, an ONNX input's own
    atol: float | None = None
    rtol: float | None = None
    tolerances: OutputTolerances = ()  # --tolerance OUTPUT=ATOL,RTOL, repeated
    data: Path | None = None
    recalibrate: Path | None = None
    bench: bool = True  # --bench/--no-bench
    batches: tuple[int, ...] = ()  # --batch 1,8,32
    providers: tuple[str, ...] = ("auto",)
    threads: int | None = None
    random_batches: int = 1
    affine_form: AffineForm = "batchnorm"
    exporter: Exporter = "auto"
    external_data: ExternalData = "auto"
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
        for old, value in (("seeds", seeds), ("factory", factory), ("trust_pickle", trust_pickle)):
            if value != UNSET[old]:
                object.__setattr__(self, OLD_NAMES[old], value)
        check_config(self)

    @property
    def load(self) -> LoadConfig:
        """The loader's options."""
        return LoadConfig(self.input_shapes, self.model, self.model_args, self.trust_code)

    @property
    def export(self) -> ExportConfig:
        """The fold's and the exporter's options."""
        return ExportConfig(
            self.opset,
            self.dynamic,
            self.input_names,
            self.output_names,
            self.affine_form,
            self.exporter,
            self.external_data,
            self.recalibrate,
        )

    @property
    def parity(self) -> ParityConfig:
        """The parity stage's options."""
        return ParityConfig(
            self.atol,
            self.rtol,
            self.tolerances,
            self.data,
            self.random_batches,
            self.save_inputs,
            self.providers,
            self.threads,
        )

    @property
    def timing(self) -> BenchConfig:
        """The latency stage's options (whether it runs at all is ``bench``)."""
        return BenchConfig(self.batches, self.providers, self.threads)


def _older_names_agree(init: Callable[..., None]) -> Callable[..., None]:
    """``init``, refusing an older name and its newer one given together with different values (an explicit
    ``trust_code=False`` beside ``trust_pickle=True`` is a contradiction, not a default to override)."""

    @functools.wraps(init)
    def checked(self: ConvertConfig, *args: Any, **kwargs: Any) -> None:
        for old, new in OLD_NAMES.items():  # an older name at its default is not given (replace() passes it)
            if kwargs.get(old, UNSET[old]) != UNSET[old] and new in kwargs and kwargs[old] != kwargs[new]:
                raise ConfigError(
                    f"{old}={kwargs[old]!r} and {new}={kwargs[new]!r} disagree: {old} is the older name of {new}; "
                    f"give {new} alone"
                )
        init(self, *args, **kwargs)

    return checked


setattr(ConvertConfig, "__init__", _older_names_agree(ConvertConfig.__init__))  # noqa: B010 - mypy: no assigning methods


def check_config(config: ConvertConfig) -> tuple[LoadConfig, ExportConfig, ParityConfig, BenchConfig]:
    """Each stage's view of ``config``, every value checked as the view is built: :class:`ConfigError` for a
    value no run could use, naming the option it belongs to."""
    return config.load, config.export, config.parity, config.timing


def _choice(option: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{option} {value!r}: expected one of {', '.join(choices)}")


def _runtime(providers: tuple[str, ...], threads: int | None) -> None:
    """``--providers`` and ``--threads``, which parity and timing share."""
    _providers(providers)
    if threads is not None:
        _int_range("--threads", threads, 1, None)


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
