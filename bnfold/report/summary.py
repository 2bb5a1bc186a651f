"""The short human summary ``bnfold convert`` prints on the terminal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bnfold.fold.records import muladd_summary
from bnfold.report.check import headline, parity_failure
from bnfold.report.document import ParitySection, Report, as_report
from bnfold.report.figures import tolerance_text
from bnfold.verify.tolerance import NOISE_FACTOR


def summary_lines(report: Report | Mapping[str, Any]) -> list[str]:
    """BNs found, folded, kept (with reasons), the parity verdict and latency before/after."""
    report = as_report(report)
    fold, onnx = report.fold, report.onnx
    lines = []
    if fold is not None:
        lines.append(
            f"BatchNorms: {fold.batchnorm_found} found, {fold.batchnorm_folded} folded, "
            f"{fold.batchnorm_affine} frozen affine, {fold.kept_as_is} kept as is; "
            f"{onnx.batchnorm_nodes} BatchNormalization node{'' if onnx.batchnorm_nodes == 1 else 's'} in {onnx.path}"
        )
        muladds = muladd_summary(fold.layers)
        lines += [f"  {muladds}"] if muladds else []
        if fold.batchnorm_affine and fold.affine_form == "batchnorm":
            lines.append(
                "  frozen affines are written as BatchNormalization with mean 0, var 1 (ONNX Runtime runs that "
                "fastest); --affine-form muladd writes Mul+Add instead"
            )
        for layer in fold.layers:
            if layer.action != "folded":
                fate = {"affine": "frozen affine", "kept": "kept as is"}[layer.action]
                fate = "Mul/Add left as written" if layer.as_written else fate
                lines.append(f"  {layer.name}: {fate}: {layer.reason}")
    lines.append(_parity_line(report))
    lines.extend(_agreement_lines(report.parity))
    lines.extend(f"note: {note}" for note in (report.parity.notes if report.parity else []))
    for item in report.speedup:
        lines.append(
            f"latency {item.backend} ({item.provider}) batch {item.batch}: "
            f"{item.original_p50_ms:.3f} ms → {item.folded_p50_ms:.3f} ms p50, ×{item.speedup_p50:.2f}"
            + (" (unsteady timings: see the warnings)" if item.steady is False else "")
        )
    lines.append(("PASS: " if report.verdict.passed else "FAIL: ") + report.verdict.reason)
    return lines


def parity_lines(report: Report | Mapping[str, Any]) -> list[str]:
    """The parity verdict, its agreement figures, and the overall verdict (``bnfold verify``)."""
    report = as_report(report)
    notes = [f"note: {note}" for note in (report.parity.notes if report.parity else [])]
    return [
        _parity_line(report),
        *_agreement_lines(report.parity),
        *notes,
        ("PASS: " if report.verdict.passed else "FAIL: ") + report.verdict.reason,
    ]


def _parity_line(report: Report) -> str:
    failure = parity_failure(report.parity)
    if failure:
        return failure
    parity = report.parity or ParitySection()
    head = headline(report)
    worst = f"{head.max_abs_err:.2e}" if head.max_abs_err is not None else "n/a"
    base = (
        f" ({parity.baseline_name} alone: {head.baseline_max_abs_err:.2e})"
        if head.baseline_max_abs_err is not None
        else ""
    )
    noise_rule = any(c.noise_bound is not None for c in parity.checks)
    rule = tolerance_text(parity, lambda value: f"{value:g}")
    if noise_rule and head.baseline_max_abs_err is not None:
        rule += f", or up to {NOISE_FACTOR:g}x the {parity.baseline_name} model's own error"
    return f"parity: passed, {len(parity.checks)} checks, max abs err {worst}{base}; {rule}"


def _agreement_lines(parity: ParitySection | None) -> list[str]:
    rates = [c.top1_agreement for c in (parity.checks if parity else []) if c.top1_agreement is not None]
    return [f"top-1 agreement with the original model: {min(rates):.2%} (worst candidate)"] if rates else []
