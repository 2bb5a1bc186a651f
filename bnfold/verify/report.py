"""The result of the parity matrix: one :class:`ParityCheck` per (reference, candidate, output)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from bnfold.verify.metrics import ErrorAccumulator
from bnfold.verify.tolerance import RULE, Tolerance

BASELINE = "baseline"
FOLD = "fold"
EXPORT = "export"
ORT_OPTIMIZATION = "ort-optimization"
PROVIDER = "provider"
STAGES = (BASELINE, FOLD, EXPORT, ORT_OPTIMIZATION, PROVIDER)


@dataclass
class ParityCheck:
    """One candidate's output against one reference; truthy when it passes.

    ``stage`` is the step under test. A check against the matrix reference (fp64) carries
    ``baseline_max_abs_err``, the original fp32 model's own error on that output, and ``error_ratio``, this
    candidate's error over it ("folding added (ratio - 1) x 100 % error"). Checks between neighbouring
    candidates (the stage checks) leave both None. ``noise_bound``, under default tolerances, is the error
    fp32 arithmetic of this model allows at that output (see :data:`~bnfold.verify.tolerance.NOISE_RULE`):
    a check within it passes even where the fixed tolerance does not. ``batch_source`` is "all" when the
    metrics aggregate every batch, with ``worst_batch`` naming where ``max_abs_err`` peaked.
    ``error_histogram`` counts the elements' absolute errors in fixed decades
    (:meth:`~bnfold.verify.metrics.ErrorHistogram.to_json`); None when the check has no numbers.
    """

    reference: str
    candidate: str
    output: str
    batch_source: str
    max_abs_err: float | None
    max_rel_err: float | None
    mean_abs_err: float | None
    mismatch_ratio: float | None
    cosine: float | None
    top1_agreement: float | None
    top5_agreement: float | None
    atol: float
    rtol: float
    passed: bool
    stage: str
    baseline_max_abs_err: float | None = None
    error_ratio: float | None = None
    worst_batch: str | None = None
    nan_count: int = 0
    error: str | None = None
    noise_bound: float | None = None
    error_histogram: dict[str, Any] | None = None

    @classmethod
    def of(
        cls,
        reference: str,
        candidate: str,
        output: str,
        batch_source: str,
        stage: str,
        errors: ErrorAccumulator,
    ) -> ParityCheck:
        """The check of ``errors``, the errors of one output added up and the tolerance they are judged by."""
        metrics, tolerance = errors.result(), errors.tolerance
        return cls(
            reference,
            candidate,
            output,
            batch_source,
            metrics.max_abs_err,
            metrics.max_rel_err,
            metrics.mean_abs_err,
            metrics.mismatch_ratio,
            metrics.cosine,
            metrics.top1_agreement,
            metrics.top5_agreement,
            tolerance.atol,
            tolerance.rtol,
            metrics.passed,
            stage,
            worst_batch=metrics.worst_batch,
            nan_count=metrics.nan_count,
            error=metrics.error,
            error_histogram=None if metrics.error_histogram is None else metrics.error_histogram.to_json(),
        )

    def __bool__(self) -> bool:
        return self.passed

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ParityCheck:
        """A check as a report wrote it (:meth:`to_json`); keys an older report did not write take their
        defaults, and a check without its tolerance has NaN there."""
        names = {f.name for f in fields(cls)}
        given = {key: value for key, value in data.items() if key in names}
        return cls(**{**_ABSENT, **given})

    def to_json(self) -> dict[str, Any]:
        """The check as JSON; NaN and infinite numbers become null (``nan_count`` tells NaN apart)."""
        return {k: _finite(v) for k, v in asdict(self).items()}

    def describe(self) -> str:
        """One terminal line."""
        mark = "ok  " if self.passed else "FAIL"
        head = f"{mark} [{self.stage}] {self.candidate} vs {self.reference}, output {self.output}"
        if self.error:
            return f"{head}: {self.error}"
        parts = [
            f"max abs {_num(self.max_abs_err)}",
            f"max rel {_num(self.max_rel_err)}",
            f"mismatch {_pct(self.mismatch_ratio)}",
        ]
        if self.top1_agreement is not None:
            parts.append(f"top1 {_pct(self.top1_agreement)}")
        if self.error_ratio is not None:
            parts.append(f"{self.error_ratio:.2f}x baseline error")
        if self.nan_count:
            parts.append(f"{self.nan_count} NaN")
        return f"{head}: " + ", ".join(parts)


@dataclass
class ParityReport:
    """Every check of the matrix; truthy when all pass. ``failed_stage`` names the step that broke parity.

    ``failed_stage`` is "baseline" when the original model in fp32 already fails against the reference: the
    tolerance is then tighter than float32 itself, and no later stage can be judged by it. Otherwise it is
    the stage of the first failing check between neighbouring candidates (fold, then export, ...); when all
    of those pass but a check against the reference fails, the stage of the first such failing candidate.
    """

    reference: str
    tolerance: Tolerance
    checks: list[ParityCheck]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    cuda: dict[str, Any] = field(default_factory=lambda: {"available": False, "note": ""})
    notes: list[str] = field(default_factory=list)
    rule: str = RULE

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(self.checks)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failed_stage(self) -> str | None:
        if self.passed:
            return None
        if any(c.stage == BASELINE and not c for c in self.checks):
            return BASELINE
        stage_checks = [c for c in self.checks if c.reference != self.reference and not c]
        failing = stage_checks or [c for c in self.checks if not c]
        return failing[0].stage if failing else None

    @property
    def failures(self) -> list[ParityCheck]:
        return [c for c in self.checks if not c]

    def to_json(self) -> dict[str, Any]:
        """The ``parity`` block of the report."""
        return {
            "passed": self.passed,
            "atol": self.tolerance.atol,
            "rtol": self.tolerance.rtol,
            "rule": self.rule,
            "reference": self.reference,
            "failed_stage": self.failed_stage,
            "cuda": dict(self.cuda),
            "inputs": [dict(i) for i in self.inputs],
            "checks": [c.to_json() for c in self.checks],
            "notes": list(self.notes),
        }

    def summary_lines(self) -> list[str]:
        """Lines for the terminal: the verdict, then one line per check, then notes."""
        verdict = "passed" if self.passed else f"FAILED at stage {self.failed_stage}"
        sources = ", ".join(str(i["source"]) for i in self.inputs) or "no inputs"
        head = f"parity {verdict} vs {self.reference} ({self.tolerance.describe()}; inputs: {sources})"
        return [head, *("  " + c.describe() for c in self.checks), *(f"  note: {n}" for n in self.notes)]


_ABSENT: dict[str, Any] = dict.fromkeys(
    ("max_abs_err", "max_rel_err", "mean_abs_err", "mismatch_ratio", "cosine", "top1_agreement", "top5_agreement")
)
_ABSENT.update(reference="", candidate="", output="", batch_source="all", stage="", passed=False)
_ABSENT.update(atol=math.nan, rtol=math.nan)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1e}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
