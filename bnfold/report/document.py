"""The report as one typed object: :class:`Report` mirrors the JSON contract ``bnfold.report/1``, section by
section.

A conversion (or ``bnfold verify``) fills a :class:`Report` as it runs; the terminal summary, Markdown,
HTML and ``bnfold check`` read its attributes; it becomes JSON only when written (:meth:`Report.to_json`).
A written report reads back into one (:meth:`Report.from_json`, :meth:`Report.from_dict`): keys the contract
lets a report leave out (those an older minor version did not write, the ``fold`` section of a verify
report) take their defaults, and keys a newer minor version added are kept in ``extra`` and written back.

Each section's fields are its JSON keys, in their written order. The records of the pipeline's stages are
used as they are: a BatchNorm's :class:`~bnfold.fold.records.BnRecord`, a parity
:class:`~bnfold.verify.report.ParityCheck`, a :class:`~bnfold.bench.timing.LatencyResult` -- each holding
the values its JSON holds (rounded times, null for a non-finite error).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from importlib import metadata
from typing import Any, ClassVar

from bnfold.bench.speedup import Speedup
from bnfold.bench.timing import LatencyResult
from bnfold.errors import ReportError, one_line
from bnfold.fold.records import BnRecord
from bnfold.report.section import Section, as_mapping, jsonable, list_of, optional
from bnfold.verify.report import ParityCheck, ParityReport

SCHEMA = "bnfold.report/1"
SCHEMA_NAME = "bnfold.report"
SUPPORTED_MAJOR = 1
REQUIRED = ("fold", "onnx", "parity", "verdict")


def bnfold_version() -> str:
    try:
        return metadata.version("bnfold")
    except metadata.PackageNotFoundError:
        return "unknown"


def now() -> str:
    """The time a report is made, as it writes it (ISO-8601, UTC, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _record(data: Mapping[str, Any]) -> BnRecord:
    """A BatchNorm record as the report wrote it (``fold.layers[]``)."""
    names = {f.name for f in fields(BnRecord)}
    return BnRecord(**{"name": "", **{k: v for k, v in data.items() if k in names}})


@dataclass
class ModelInput(Section):
    """One input of the model as the ONNX file names it (``model.inputs[]``)."""

    name: str = ""
    shape: list[int] = field(default_factory=list)
    dtype: str = ""
    dynamic_axes: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class ModelSection(Section):
    """``model``: the input file, its hash and format, its inputs, and what bnfold changed or chose."""

    READERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {"inputs": list_of(ModelInput.from_dict)}

    path: str | None = None
    sha256: str | None = None
    format: str | None = None
    inputs: list[ModelInput] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class FoldSection(Section):
    """``fold``: BatchNorms found, folded, kept, and one record per BatchNorm (``layers``)."""

    READERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {"layers": list_of(_record)}

    batchnorm_found: int = 0
    batchnorm_folded: int = 0
    batchnorm_affine: int = 0
    batchnorm_kept: int = 0
    recalibrated: bool = False
    affine_form: str | None = None
    seconds: float | None = None
    layers: list[BnRecord] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def kept_as_is(self) -> int:
        """BatchNorms neither folded nor frozen as affine."""
        return self.batchnorm_kept - self.batchnorm_affine


@dataclass
class OnnxSection(Section):
    """``onnx``: the ONNX file written -- or, in a ``bnfold verify`` report, the candidate checked, which
    has a ``format`` and (for an ONNX candidate) only its opset, node counts and size."""

    path: str | None = None
    external_data: str | None = None
    exporter: str | None = None
    opset: int | None = None
    batchnorm_nodes: int | None = None
    nodes: int | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    external_data_sha256: str | None = None
    optimized_path: str | None = None
    format: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    CANDIDATE_GRAPH: ClassVar[tuple[str, ...]] = ("batchnorm_nodes", "nodes", "opset", "size_bytes")

    def to_dict(self) -> dict[str, Any]:
        if self.format is None:
            out = super().to_dict()
            del out["format"]
            return out
        candidate: dict[str, Any] = {"path": self.path, "sha256": self.sha256, "format": self.format}
        if self.nodes is not None:  # an ONNX candidate
            candidate.update({key: getattr(self, key) for key in self.CANDIDATE_GRAPH})
        return {**candidate, **self.extra}


@dataclass
class CudaInfo(Section):
    """``parity.cuda``: whether CUDA results are in the matrix, and why not."""

    available: bool = False
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class ParityInput(Section):
    """``parity.inputs[]``: one batch the matrix ran on."""

    source: str = ""
    batch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class ParitySection(Section):
    """``parity``: the verdict of the parity matrix, its rule, inputs and every check, as written."""

    READERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "cuda": CudaInfo.from_dict,
        "inputs": list_of(ParityInput.from_dict),
        "checks": list_of(ParityCheck.from_json),
    }

    passed: bool = False
    atol: float | None = None
    rtol: float | None = None
    rule: str = ""
    reference: str = ""
    failed_stage: str | None = None
    cuda: CudaInfo = field(default_factory=CudaInfo)
    inputs: list[ParityInput] = field(default_factory=list)
    checks: list[ParityCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, report: ParityReport) -> ParitySection:
        """The section of a parity matrix's result, holding what its JSON holds."""
        return cls.from_dict(report.to_json())

    def against_reference(self) -> list[ParityCheck]:
        """The checks against the matrix reference (the fp64 original), not those between stages."""
        return [c for c in self.checks if c.reference == self.reference]

    @property
    def baseline_name(self) -> str:
        """The original model as the baseline ran it: "original fp32", or a low-precision model in its own
        dtype ("original bf16")."""
        return next((str(c.candidate) for c in self.checks if c.stage == "baseline"), "original fp32")

    @property
    def precision(self) -> str:
        """What the baseline computed in, as its name says it: "fp32", "bf16" or "fp16"."""
        return self.baseline_name.removeprefix("original ")


def noise_label(baseline: str) -> str:
    """The baseline named as the yardstick of rounding noise: "original fp32 (fp32 noise)",
    "original bf16 (bf16 noise)"."""
    return f"{baseline} ({baseline.removeprefix('original ')} noise)"


@dataclass
class SpeedupEntry(Section):
    """``speedup[]``: the folded model's speedup on one (backend, provider, batch), as written (see
    :class:`bnfold.bench.Speedup`, whose ``to_json`` it reads)."""

    backend: str = ""
    provider: str = ""
    batch: int = 0
    speedup_p50: float | None = None
    speedup_low: float | None = None
    speedup_high: float | None = None
    original_p50_ms: float | None = None
    folded_p50_ms: float | None = None
    steady: bool | None = None  # None in a report written before the key existed
    verdict: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.steady is None:  # a report written before the key existed reads back as it was
            del out["steady"]
        return out


@dataclass
class Verdict(Section):
    """``verdict``: the overall verdict, its reason, and the headline error."""

    passed: bool = False
    reason: str = "not run"
    max_abs_err: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Report(Section, Mapping[str, Any]):
    """One report of the ``bnfold.report/1`` contract: ``convert``'s, or ``bnfold verify``'s (``fold`` None).

    ``report.to_json()`` is the text written, ``report.to_dict()`` its JSON data. For code written against
    the dict this object replaced, it also reads as that dict, read-only: ``report["verdict"]["passed"]``
    is ``report.to_dict()["verdict"]["passed"]``.
    """

    READERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "model": ModelSection.from_dict,
        "fold": optional(FoldSection.from_dict),
        "onnx": OnnxSection.from_dict,
        "parity": optional(ParitySection.from_dict),
        "latency": list_of(LatencyResult.from_json),
        "speedup": list_of(SpeedupEntry.from_dict),
        "environment": lambda data: dict(as_mapping(data)),
        "verdict": Verdict.from_dict,
    }

    schema: str = SCHEMA
    bnfold_version: str = field(default_factory=bnfold_version)
    created: str = field(default_factory=now)
    model: ModelSection = field(default_factory=ModelSection)
    fold: FoldSection | None = None
    onnx: OnnxSection = field(default_factory=OnnxSection)
    parity: ParitySection | None = None
    latency: list[LatencyResult] = field(default_factory=list)
    speedup: list[SpeedupEntry] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    verdict: Verdict = field(default_factory=Verdict)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The report's JSON data, keys in their documented order (an empty object for a section not run)."""
        out = super().to_dict()
        out["fold"] = out["fold"] or {}
        out["parity"] = out["parity"] or {}
        return out

    def to_json(self) -> str:
        """The text of ``REPORT.json``."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=jsonable) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "report") -> Report:
        """A report from its JSON text; :class:`~bnfold.errors.ReportError` when it is not one this version
        reads."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{where}: not a bnfold report (not JSON: {exc})") from None
        return cls.read(data, where)

    @classmethod
    def read(cls, data: Any, where: str = "report") -> Report:
        """:meth:`from_dict` for data from a file: :class:`~bnfold.errors.ReportError` unless ``data`` is a
        report of a schema major this version reads, with every section of the type the contract says."""
        validate_report(data, where)
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise ReportError(
                f"{where}: malformed bnfold report, a field has the wrong type ({one_line(exc)})"
            ) from exc

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def timed(
    results: Sequence[LatencyResult], speedups: Sequence[Speedup]
) -> tuple[list[LatencyResult], list[SpeedupEntry]]:
    """The report's ``latency`` and ``speedup`` entries of a timing run, holding what their JSON holds
    (times rounded, no samples; each speedup with the verdict of its unrounded ratios)."""
    latency = [LatencyResult.from_json(r.to_json()) for r in results]
    return latency, [SpeedupEntry.from_dict(s.to_json()) for s in speedups]


def as_report(report: Report | Mapping[str, Any]) -> Report:
    """``report`` as a :class:`Report`: itself, or a report's JSON data read into one."""
    return report if isinstance(report, Report) else Report.from_dict(report)


def validate_report(data: Any, where: str = "report") -> None:
    """Raise :class:`~bnfold.errors.ReportError` unless ``data`` is a report of a schema major we read."""
    if not isinstance(data, dict) or "schema" not in data:
        raise ReportError(f'{where}: not a bnfold report (no "schema" key; expected "{SCHEMA_NAME}/1")')
    name, _, version = str(data["schema"]).partition("/")
    major = version.split(".")[0]
    if name != SCHEMA_NAME or not major.isdigit():
        raise ReportError(f'{where}: not a bnfold report (schema "{data["schema"]}")')
    if int(major) != SUPPORTED_MAJOR:
        raise ReportError(
            f'{where}: report schema "{data["schema"]}" is not readable by this bnfold, '
            f'which reads "{SCHEMA_NAME}/{SUPPORTED_MAJOR}"; use a matching bnfold version'
        )
    missing = [key for key in REQUIRED if not isinstance(data.get(key), dict)]
    if missing:
        raise ReportError(f"{where}: incomplete bnfold report (no {', '.join(missing)} section)")
