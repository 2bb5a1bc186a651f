"""A report as Markdown, sized for a CI job summary: the verdict on the first line, then the tables.

Every string from the report is escaped, so a layer name cannot break a table or inject markup.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from bnfold.bench.timing import LatencyResult
from bnfold.fold.records import BnRecord, muladd_summary
from bnfold.report.check import headline, parity_failure
from bnfold.report.document import FoldSection, ParitySection, Report, SpeedupEntry, as_report
from bnfold.report.figures import (
    ErrorFigure,
    error_figure,
    fold_ran,
    histogram_groups,
    latency_groups,
    ms,
    num,
    onnx_details,
    other_speedups,
    parity_notes,
    pct,
    ratio_text,
    share_below,
    speedup_range,
    speedup_tone,
    spread_text,
    times,
    tolerance_text,
)
from bnfold.report.merged import merged_markdown
from bnfold.verify.report import ParityCheck

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def esc(value: Any) -> str:
    """Report text safe inside Markdown (and a table cell): markup characters backslashed, and a ``<`` that
    would open an HTML tag or comment, or an ``&`` that would start an entity, escaped; ``>`` and ``<=`` stay
    as they are, so the file also reads as plain text."""
    text = str(value).replace("\n", " ")
    text = _ENTITY_START.sub("&amp;", text)
    text = _TAG_START.sub("&lt;", text)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


_ENTITY_START = re.compile(r"&(?=#?[A-Za-z0-9]+;)")
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def render_markdown(report: Report | Mapping[str, Any]) -> str:
    """The whole report as Markdown: verdict, headline, BatchNorms, latency, parity, warnings, environment."""
    report = as_report(report)
    parts = [
        _verdict(report),
        _figures(report),
        _batchnorms(report.fold),
        merged_markdown(report.onnx, esc),
        _latency(report.latency, report.speedup),
        _parity(report.parity),
        _warnings(report.warnings),
        _environment(report.environment),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _verdict(report: Report) -> str:
    mark, word = ("✅", "PASS") if report.verdict.passed else ("❌", "FAIL")
    reason = str(report.verdict.reason)
    line = f"# {mark} bnfold: {word} — {esc(reason)}"
    failure = parity_failure(report.parity)
    return f"{line}\n\n**{esc(failure)}**" if failure and failure != reason else line


def _figures(report: Report) -> str:
    head = headline(report)
    figures = [_error_text(error_figure(report))]
    if fold_ran(report):
        figures.insert(0, f"**{head.batchnorm_folded}/{head.batchnorm_found} BatchNorms folded**")
    if head.speedup_text():
        where = esc(head.speedup_backend)
        noise = {"faster": "", "slower": ", slower beyond timing noise", "unchanged": ", within timing noise"}[
            speedup_tone(report) or "unchanged"
        ]
        others = "".join(f"; {esc(name)} {text}" for name, text in other_speedups(report))
        figures.append(f"**speedup {speedup_range(head)}** ({where} p50, original / folded{noise}{others})")
    return " · ".join(figures) + "\n\n" + _files(report)


def _error_text(error: ErrorFigure) -> str:
    text = f"**max abs error {num(error.max_abs_err)}** vs fp64"
    if error.ratio is not None and error.baseline:
        own = f"{times(error.ratio)} the {error.baseline_name} model's own, {num(error.baseline)}"
        return text + f" ({own}{error.limit_text()})"
    return text + (f" ({error.baseline_name} itself: {num(error.baseline)})" if error.baseline else "")


def _files(report: Report) -> str:
    model, onnx = report.model, report.onnx
    source = f"{esc(model.path or 'in-memory model')} ({esc(_known(model.format))})"
    nodes = "node" if onnx.batchnorm_nodes == 1 else "nodes"
    details = onnx_details(onnx) + [f"{esc(_known(onnx.batchnorm_nodes))} BatchNormalization {nodes}"]
    line = f"{source} → {esc(_known(onnx.path))} ({', '.join(details)})"
    return line + "".join(f"\n\n> {esc(note)}" for note in model.notes)


def _known(value: Any) -> Any:
    return "?" if value is None else value


def _batchnorms(fold: FoldSection | None) -> str:
    if fold is None:
        return "## BatchNorms\n\nNot folded in this run: the report compares two given models."
    title = (
        f"## BatchNorms: {fold.batchnorm_found} found, {fold.batchnorm_folded} "
        f"folded, {fold.batchnorm_affine} frozen affine, {fold.kept_as_is} kept as is"
    )
    if fold.recalibrated:
        title += " (statistics recalibrated)"
    muladds = muladd_summary(fold.layers)
    title += f"; {muladds}" if muladds else ""
    rows = [
        [
            esc(layer.name),
            esc(layer.kind),
            _action(layer),
            _detail(layer),
            esc(layer.channels if layer.channels is not None else ""),
        ]
        for layer in fold.layers
    ]
    return title + "\n\n" + table(["BatchNorm", "kind", "result", "into / reason", "channels"], rows)


def _action(layer: BnRecord) -> str:
    if layer.action == "folded":
        return f"✅ folded ({esc(layer.how or '')})"
    if layer.as_written:
        return "Mul/Add, left as written"
    return "⚠️ frozen affine" if layer.action == "affine" else "❌ kept"


def _detail(layer: BnRecord) -> str:
    if layer.action == "folded":
        return ", ".join(esc(name) for name in layer.into)
    return esc(layer.reason or "")


def _parity(parity: ParitySection | None) -> str:
    if parity is None:
        return ""
    verdict = "passed" if parity.passed else f"FAILED at stage {esc(parity.failed_stage)}"
    inputs = ", ".join(f"{esc(i.source)} (batch {esc(i.batch)})" for i in parity.inputs)
    intro = (
        f"## Parity: {verdict}\n\nEvery candidate against {esc(parity.reference)}, and each "
        f"stage against the one before it. Rule: {esc(parity.rule)}, {esc(tolerance_text(parity, num))}. "
        f"Inputs: {inputs or 'none'}."
    )
    header = [
        "",
        "stage",
        "candidate",
        "vs",
        "output",
        "max abs err",
        f"× {esc(parity.precision)} error",
        "max rel err",
        "mismatch",
        "cosine",
        "top-1",
    ]
    rows = [_parity_row(c) for c in parity.checks]
    notes = "".join(f"\n\n> {esc(note)}" for note in parity_notes(parity))
    return intro + "\n\n" + table(header, rows) + _histogram_lines(parity) + notes


SUMMARY_BOUND = 1e-6


def _histogram_lines(parity: ParitySection) -> str:
    """One line per output: the share of elements each candidate (the original fp32 first) keeps under
    :data:`SUMMARY_BOUND` against the reference, read from the error histograms."""
    lines = []
    for group in histogram_groups(parity):
        checks = ([group.baseline] if group.baseline is not None else []) + group.candidates
        shares = [(check, share_below(check.error_histogram or {}, SUMMARY_BOUND)) for check in checks]
        parts = [f"{esc(check.candidate)} {pct(share)}" for check, share in shares if share is not None]
        if parts:
            bound = f"{SUMMARY_BOUND:.0e}".replace("e-0", "e-")
            lines.append(
                f"Share of elements with \\|error\\| under {bound} against {esc(parity.reference)}, "
                f"output {esc(group.output)}: " + " · ".join(parts)
            )
    return "".join(f"\n\n{line}" for line in lines)


def _parity_row(check: ParityCheck) -> list[str]:
    ratio = check.error_ratio
    return [
        "✅" if check.passed else "❌",
        esc(check.stage),
        esc(check.candidate),
        esc(check.reference),
        esc(check.output),
        esc(check.error) if check.error else num(check.max_abs_err),
        "" if ratio is None else times(ratio),
        num(check.max_rel_err),
        pct(check.mismatch_ratio),
        _cosine(check.cosine),
        pct(check.top1_agreement),
    ]


def _latency(latency: Sequence[LatencyResult], speedup: Sequence[SpeedupEntry]) -> str:
    if not latency:
        return "## Latency\n\nNot measured."
    rows = []
    for group in latency_groups(latency, speedup):
        rows.append(
            [
                esc(group.backend),
                esc(group.provider),
                esc(group.batch),
                ms(group.original),
                ms(group.folded),
                ratio_text(group.speedup.speedup_p50 if group.speedup else None),
                spread_text(group.speedup),
            ]
        )
    threads = sorted({str(r.threads) for r in latency})
    header = ["backend", "provider", "batch", "original p50", "folded p50", "speedup", "IQR of paired ratios"]
    return (
        "## Latency\n\n"
        + table(header, rows)
        + f"\n\nThreads: {esc(', '.join(threads))}; runs interleaved, original and folded in turn."
    )


def _warnings(warnings: Sequence[str]) -> str:
    if not warnings:
        return ""
    return "## Warnings\n\n" + "\n".join(f"- {esc(w)}" for w in warnings)


def _environment(env: Mapping[str, Any]) -> str:
    if not env:
        return ""
    rows = [[esc(k), esc(", ".join(map(str, v)) if isinstance(v, list) else v)] for k, v in env.items()]
    return "<details><summary>Environment</summary>\n\n" + table(["", ""], rows) + "\n\n</details>"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; cells must already be escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cosine(value: Any) -> str:
    return "" if value is None else f"{float(value):.6f}"
