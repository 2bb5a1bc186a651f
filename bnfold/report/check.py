"""``bnfold check``: judge written reports against CI thresholds, one line of reason per report."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnfold.errors import ConfigError, ReportError, one_line
from bnfold.report.document import (
    REQUIRED,
    SCHEMA_NAME,
    SUPPORTED_MAJOR,
    ParitySection,
    Report,
    SpeedupEntry,
    Verdict,
    as_report,
    validate_report,
)
from bnfold.verify.report import BASELINE, ParityCheck


def load_report(path: str | Path) -> Report:
    """Read a bnfold report; :class:`~bnfold.errors.ReportError` if the file is not one this version reads."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{path}: cannot read the report ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path}: not a bnfold report (not JSON: {exc})") from None
    return Report.from_json(text, str(path))


@dataclass(frozen=True)
class Headline:
    """The figures a reader wants first: BatchNorms folded, worst error, speedup."""

    batchnorm_found: int
    batchnorm_folded: int
    batchnorm_nodes: int
    max_abs_err: float | None
    worst_check: str | None
    baseline_max_abs_err: float | None
    speedup_min: float | None
    speedup_max: float | None
    slowest: str | None
    speedup_backend: str | None = None

    def speedup_text(self) -> str | None:
        """``1.31x``, or ``1.12-1.31x`` over several backends and batch sizes; None when not measured."""
        if self.speedup_min is None or self.speedup_max is None:
            return None
        if f"{self.speedup_min:.2f}" == f"{self.speedup_max:.2f}":
            return f"{self.speedup_min:.2f}x"
        return f"{self.speedup_min:.2f}-{self.speedup_max:.2f}x"


def headline(report: Report | Mapping[str, Any]) -> Headline:
    """The headline figures of a report.

    ``max_abs_err`` is the largest error against the parity reference (the fp64 original) of what bnfold
    made (every candidate but the untouched fp32 original; None when a check has no number, e.g. NaN);
    ``baseline_max_abs_err`` that of the original fp32 model against the reference, for scale. The
    speedups are those measured in onnxruntime (the deliverable), or all of them if none were.
    """
    report = as_report(report)
    every = report.parity.checks if report.parity else []
    reference = report.parity.reference if report.parity else None
    against_truth = [c for c in every if c.reference == reference] or every
    checks = [c for c in against_truth if c.stage != BASELINE] or against_truth
    measured = [c for c in checks if c.max_abs_err is not None]
    worst = max(measured, key=lambda c: c.max_abs_err or 0.0, default=None)
    baseline = [c.max_abs_err for c in against_truth if c.stage == BASELINE and c.max_abs_err is not None]
    speedups = deployed_speedups(report.speedup)
    slowest = min(speedups, key=lambda s: s.speedup_p50 or 0.0, default=None)
    return Headline(
        batchnorm_found=int(report.fold.batchnorm_found) if report.fold else 0,
        batchnorm_folded=int(report.fold.batchnorm_folded) if report.fold else 0,
        batchnorm_nodes=int(report.onnx.batchnorm_nodes or 0),
        max_abs_err=None if (len(measured) < len(checks) or worst is None) else worst.max_abs_err,
        worst_check=check_name(worst) if worst is not None else None,
        baseline_max_abs_err=max(baseline) if baseline else None,
        speedup_min=slowest.speedup_p50 if slowest else None,
        speedup_max=max(s.speedup_p50 or 0.0 for s in speedups) if speedups else None,
        slowest=_speedup_name(slowest) if slowest else None,
        speedup_backend=", ".join(dict.fromkeys(str(s.backend) for s in speedups)) or None,
    )


def deployed_speedups(speedups: Sequence[SpeedupEntry]) -> list[SpeedupEntry]:
    """The speedups the headline is about: onnxruntime's (the deliverable), or all when it was not timed."""
    measured = [s for s in speedups if s.speedup_p50 is not None]
    ort = [s for s in measured if s.backend == "onnxruntime"]
    return ort or measured


def check_name(check: ParityCheck) -> str:
    return f"{check.candidate} output {check.output}"


def _speedup_name(item: SpeedupEntry) -> str:
    return f"{item.backend} {item.provider} batch {item.batch}"


@dataclass(frozen=True)
class ReportCheck:
    """The verdict on one report; truthy when it passes."""

    path: str
    passed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.passed

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.path}: {self.reason}"


@dataclass(frozen=True)
class CheckVerdict:
    """The verdicts on several reports; truthy when all pass."""

    results: list[ReportCheck]

    def __bool__(self) -> bool:
        return bool(self.results) and all(self.results)

    def line(self) -> str:
        """One line per report (one line in all for a single report)."""
        return "\n".join(r.line() for r in self.results)

    def table(self) -> str:
        """An aligned plain-text table of every report, then the count that passed."""
        width = max((len(r.path) for r in self.results), default=6)
        rows = [f"{'report'.ljust(width)}  verdict  reason", f"{'-' * width}  -------  ------"]
        rows += [f"{r.path.ljust(width)}  {'PASS' if r else 'FAIL':<7}  {r.reason}" for r in self.results]
        rows.append(f"{sum(map(bool, self.results))}/{len(self.results)} reports pass")
        return "\n".join(rows)

    def to_json(self) -> list[dict[str, Any]]:
        return [{"path": r.path, "passed": r.passed, "reason": r.reason} for r in self.results]


def check_report(
    report: Report | Mapping[str, Any],
    path: str = "report",
    max_abs_err: float | None = None,
    require_no_batchnorm: bool = False,
    min_speedup: float | None = None,
) -> ReportCheck:
    """Judge one (already validated) report; every failed requirement is named in the reason."""
    report = as_report(report)
    head = headline(report)
    problems = [
        *_parity_problems(report),
        *_verdict_problems(report),
        *_batchnorm_problems(report, head, require_no_batchnorm),
        *_error_problems(head, max_abs_err),
        *_speedup_problems(head, min_speedup),
    ]
    if problems:
        return ReportCheck(path, False, "; ".join(dict.fromkeys(problems)))
    return ReportCheck(path, True, _ok_reason(head, folded=report.fold is not None))


def check_reports(
    paths: Iterable[str | Path],
    max_abs_err: float | None = None,
    require_no_batchnorm: bool = False,
    min_speedup: float | None = None,
) -> CheckVerdict:
    """Load and judge each report (a file that is not a report raises ReportError). A many-model summary
    (``summary.json``) stands for every report it lists; a model it lists without one fails. A threshold
    that is not a finite number >= 0 is a :class:`~bnfold.errors.ConfigError` (NaN would pass every report)."""
    for option, value in (("--max-abs-err", max_abs_err), ("--min-speedup", min_speedup)):
        if value is not None and not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
            raise ConfigError(f"{option} {value!r}: a threshold is a finite number >= 0")
    results = []
    for path in paths:
        for name, report_path, reason in _expand(Path(path)):
            if report_path is None:
                results.append(ReportCheck(name, False, reason))
                continue
            report = load_report(report_path)
            results.append(_judged(report, report_path, max_abs_err, require_no_batchnorm, min_speedup))
    return CheckVerdict(results)


def _expand(path: Path) -> list[tuple[str, Path | None, str]]:
    """A report stands for itself; a many-model summary for the reports it lists."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return [(str(path), path, "")]  # load_report says what is wrong with it
    if isinstance(data, dict) and str(data.get("schema", "")).startswith("bnfold.summary/"):
        from bnfold.report.aggregate import read_summary, report_paths

        return report_paths(read_summary(data, str(path)), path.parent)
    return [(str(path), path, "")]


def _judged(
    report: Report,
    path: Path,
    max_abs_err: float | None,
    require_no_batchnorm: bool,
    min_speedup: float | None,
) -> ReportCheck:
    """:func:`check_report`, a field of the wrong type being a :class:`ReportError` (exit 2), not a crash, as a
    parity verdict its own checks contradict (an edited report: check judges by the verdict)."""
    parity = report.parity
    if parity is not None and parity.checks and bool(parity.passed) != all(c.passed for c in parity.checks):
        said = "passed" if parity.passed else "failed"
        raise ReportError(f"{path}: inconsistent bnfold report: parity.passed says {said}, its checks do not agree")
    try:
        return check_report(report, str(path), max_abs_err, require_no_batchnorm, min_speedup)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        raise ReportError(f"{path}: malformed bnfold report, a field has the wrong type ({one_line(exc)})") from exc


def parity_failure(parity: ParitySection | None) -> str | None:
    """Why parity failed, naming the stage and its first failing check; None when it passed."""
    parity = parity or ParitySection()
    if parity.passed:
        return None
    stage = parity.failed_stage or "unknown"
    failing = [c for c in parity.checks if not c.passed]
    first = next((c for c in failing if c.stage == stage), failing[0] if failing else None)
    if first is None:
        return f"parity failed at stage {stage}"
    said = f"parity failed at stage {stage}: {check_name(first)} {_failure_detail(first)}"
    if stage == BASELINE and not first.error and not first.nan_count:
        said += (
            ": the untouched original in float32 already misses the tolerance, so no stage can be judged by it; "
            "loosen --atol/--rtol, or leave them out to judge each stage against the original's own error"
        )
    return said


def overall_verdict(report: Report) -> Verdict:
    """The overall verdict: parity decides; the reason says what was gained or what broke. ``max_abs_err``
    is the headline error (what bnfold made against the fp64 reference), the number every rendering shows."""
    error = headline(report).max_abs_err
    fold = report.fold
    if report.parity is not None and report.parity.passed:
        folded = f"; {fold.batchnorm_folded}/{fold.batchnorm_found} BatchNorms folded" if fold else ""
        return Verdict(True, "parity passed" + folded, error)
    return Verdict(False, parity_failure(report.parity) or "parity failed", error)


def _parity_problems(report: Report) -> list[str]:
    failure = parity_failure(report.parity)
    return [failure] if failure else []


def _failure_detail(check: ParityCheck) -> str:
    if check.error:
        return str(check.error)
    if check.nan_count:
        return f"has {check.nan_count} NaN values"
    tolerance = f"tolerance (atol {_num(check.atol)}, rtol {_num(check.rtol)})"
    return f"max_abs_err {_num(check.max_abs_err)} > {tolerance}"


def _verdict_problems(report: Report) -> list[str]:
    if report.verdict.passed or not (report.parity and report.parity.passed):
        return []
    return [str(report.verdict.reason or "the report's verdict is fail")]


def _batchnorm_problems(report: Report, head: Headline, required: bool) -> list[str]:
    if not required or head.batchnorm_nodes == 0:
        return []
    name = Path(str(report.onnx.path or "the ONNX file")).name
    plural = "node remains" if head.batchnorm_nodes == 1 else "nodes remain"
    return [f"{head.batchnorm_nodes} BatchNormalization {plural} in {name}"]


def _error_problems(head: Headline, limit: float | None) -> list[str]:
    if limit is None:
        return []
    if head.max_abs_err is None:
        return [f"max abs err unknown (a parity check has no finite error) with --max-abs-err {limit:.1e}"]
    if head.max_abs_err > limit:
        return [f"max abs err {head.max_abs_err:.1e} > allowed {limit:.1e} ({head.worst_check})"]
    return []


def _speedup_problems(head: Headline, required: float | None) -> list[str]:
    if required is None:
        return []
    if head.speedup_min is None:
        return [f"no speedup in the report (made with --no-bench?); cannot check required {required:.2f}x"]
    if head.speedup_min < required:
        return [f"speedup {head.speedup_min:.2f}x < required {required:.2f}x ({head.slowest})"]
    return []


def _ok_reason(head: Headline, folded: bool = True) -> str:
    """What passed; a ``verify`` report (nothing folded) has no BatchNorm count."""
    parts = [f"parity passed (max abs err {_num(head.max_abs_err)})"]
    if folded:
        parts.insert(0, f"{head.batchnorm_folded}/{head.batchnorm_found} BatchNorms folded")
    parts[0] = "ok: " + parts[0]
    speedup = head.speedup_text()
    if speedup:
        parts.append(f"speedup {speedup}")
    return ", ".join(parts)


def _num(value: float | None) -> str:
    return f"{value:.1e}" if isinstance(value, (int, float)) and not math.isnan(value) else "n/a"


__all__ = [
    "REQUIRED",
    "SCHEMA_NAME",
    "SUPPORTED_MAJOR",
    "CheckVerdict",
    "Headline",
    "ReportCheck",
    "check_report",
    "check_reports",
    "headline",
    "load_report",
    "overall_verdict",
    "parity_failure",
    "validate_report",
]
