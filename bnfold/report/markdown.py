"""A report as Markdown, sized for a CI job summary: the verdict on the first line, then the tables.

Every string from the report is escaped, so a layer name cannot break a table or inject markup.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnfold.bench.timing import LatencyResult
from bnfold.fold.records import BnRecord
from bnfold.report.check import Headline, deployed_speedups, headline, parity_failure
from bnfold.report.document import FoldSection, OnnxSection, ParitySection, Report, SpeedupEntry, as_report
from bnfold.verify.report import BASELINE, ParityCheck

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def esc(value: Any) -> str:
    """Report text safe inside Markdown (and a table cell): HTML-escaped, markup characters backslashed."""
    text = html.escape(str(value), quote=False).replace("\n", " ")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def render_markdown(report: Report | Mapping[str, Any]) -> str:
    """The whole report as Markdown: verdict, headline, BatchNorms, latency, parity, warnings, environment."""
    report = as_report(report)
    parts = [
        _verdict(report),
        _figures(report),
        _batchnorms(report.fold),
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
        return text + f" ({times(error.ratio)} the {error.baseline_name} model's own, {num(error.baseline)})"
    return text + (f" ({error.baseline_name} itself: {num(error.baseline)})" if error.baseline else "")


def _files(report: Report) -> str:
    model, onnx = report.model, report.onnx
    source = f"{esc(model.path or 'in-memory model')} ({esc(_known(model.format))})"
    details = onnx_details(onnx) + [f"{esc(_known(onnx.batchnorm_nodes))} BatchNormalization nodes"]
    line = f"{source} → {esc(_known(onnx.path))} ({', '.join(details)})"
    return line + "".join(f"\n\n> {esc(note)}" for note in model.notes)


def _known(value: Any) -> Any:
    return "?" if value is None else value


def fold_ran(report: Report) -> bool:
    """Whether this report folded anything (``bnfold verify`` reports compare two given models)."""
    return report.fold is not None


def onnx_details(onnx: OnnxSection) -> list[str]:
    """Opset, node count, size and exporter of the ONNX file, leaving out what the report does not know."""
    parts = [
        f"opset {onnx.opset}" if onnx.opset is not None else "",
        f"{onnx.nodes} nodes" if onnx.nodes is not None else "",
        size(onnx.size_bytes) if onnx.size_bytes is not None else "",
        f"exporter {onnx.exporter}" if onnx.exporter else "",
        f"weights in {Path(onnx.external_data).name}" if onnx.external_data else "",
    ]
    return [part for part in parts if part]


@dataclass(frozen=True)
class ErrorFigure:
    """The worst error of a candidate against the fp64 reference, and in units of the original fp32's own."""

    max_abs_err: float | None
    ratio: float | None
    baseline: float | None
    baseline_name: str = "original fp32"


def error_figure(report: Report) -> ErrorFigure:
    """The headline's error (see :func:`~bnfold.report.check.headline`) and the worst ratio to the original
    fp32 model's own error. ``max_abs_err`` is None when a check has no number (NaN or a failed run)."""
    head = headline(report)
    checks = report.parity.against_reference() if report.parity else []
    ratios = [c.error_ratio for c in checks if c.stage != BASELINE and c.error_ratio is not None]
    name = report.parity.baseline_name if report.parity else "original fp32"
    return ErrorFigure(head.max_abs_err, max(ratios, default=None), head.baseline_max_abs_err, name)


def worst_top1(report: Report) -> float | None:
    checks = report.parity.checks if report.parity else []
    return min((c.top1_agreement for c in checks if c.top1_agreement is not None), default=None)


def speedup_range(head: Headline) -> str:
    return (head.speedup_text() or "").replace("x", "×")


def speedup_tone(report: Report) -> str | None:
    """``faster`` when every headline speedup's spread is above 1, ``slower`` when one is below, else
    ``unchanged`` (within the timing noise); None when nothing was measured."""
    chosen = deployed_speedups(report.speedup)
    if not chosen:
        return None
    if min(s.speedup_high or s.speedup_p50 or 0.0 for s in chosen) < 1.0:
        return "slower"
    return "faster" if min(s.speedup_low or s.speedup_p50 or 0.0 for s in chosen) > 1.0 else "unchanged"


def other_speedups(report: Report) -> list[tuple[str, str]]:
    """Speedup ranges of the backends the headline leaves out (e.g. torch eager), by backend and provider."""
    shown = [id(s) for s in deployed_speedups(report.speedup)]
    ranges: dict[str, list[float]] = {}
    for item in report.speedup:
        if item.speedup_p50 is not None and id(item) not in shown:
            ranges.setdefault(f"{item.backend} {item.provider}", []).append(item.speedup_p50)
    return [(name, _range(min(v), max(v))) for name, v in ranges.items()]


def _range(low: float, high: float) -> str:
    return f"{low:.2f}×" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}×"


def parity_notes(parity: ParitySection) -> list[str]:
    """The parity notes (e.g. why CUDA was not checked), each once."""
    notes = [*parity.notes, parity.cuda.note]
    return [str(note) for note in dict.fromkeys(notes) if note]


def _batchnorms(fold: FoldSection | None) -> str:
    if fold is None:
        return "## BatchNorms\n\nNot folded in this run: the report compares two given models."
    title = (
        f"## BatchNorms: {fold.batchnorm_found} found, {fold.batchnorm_folded} "
        f"folded, {fold.batchnorm_affine} frozen affine, {fold.kept_as_is} kept as is"
    )
    if fold.recalibrated:
        title += " (statistics recalibrated)"
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
        f"stage against the one before it. Rule: {esc(parity.rule)}, atol "
        f"{num(parity.atol)}, rtol {num(parity.rtol)}. Inputs: {inputs or 'none'}."
    )
    header = [
        "",
        "stage",
        "candidate",
        "vs",
        "output",
        "max abs err",
        "× fp32 error",
        "max rel err",
        "mismatch",
        "cosine",
        "top-1",
    ]
    rows = [_parity_row(c) for c in parity.checks]
    notes = "".join(f"\n\n> {esc(note)}" for note in parity_notes(parity))
    return intro + "\n\n" + table(header, rows) + _histogram_lines(parity) + notes


@dataclass(frozen=True)
class HistogramGroup:
    """The checks of one output against the fp64 reference that carry an error histogram: the original fp32
    model's own (``baseline``, None when the run has none) and every other candidate's, in matrix order."""

    output: str
    baseline: ParityCheck | None
    candidates: list[ParityCheck]


def histogram_groups(parity: ParitySection) -> list[HistogramGroup]:
    """One :class:`HistogramGroup` per output (and per batch, for per-batch checks), in report order;
    outputs without a candidate histogram are left out."""
    groups: dict[tuple[str, str], HistogramGroup] = {}
    for check in parity.checks:
        if check.reference != parity.reference or not check.error_histogram:
            continue
        source = str(check.batch_source)
        key = (str(check.output), source)
        label = key[0] if source == "all" else f"{key[0]}, batch {source}"
        group = groups.setdefault(key, HistogramGroup(label, None, []))
        if check.stage == BASELINE and group.baseline is None:
            groups[key] = HistogramGroup(label, check, group.candidates)
        else:
            group.candidates.append(check)
    return [group for group in groups.values() if group.candidates]


def share_below(histogram: Mapping[str, Any], bound: float) -> float | None:
    """The share of elements whose error is under ``bound``, one of the histogram's edges; None when the
    histogram is empty or ``bound`` is not an edge."""
    edges, total = [float(e) for e in histogram.get("edges", [])], int(histogram.get("total") or 0)
    if not total or bound not in edges:
        return None
    counts = [int(c) for c in histogram.get("counts", [])[: edges.index(bound)]]
    return (int(histogram.get("zeros", 0)) + int(histogram.get("below", 0)) + sum(counts)) / total


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


@dataclass
class LatencyGroup:
    """One (backend, provider, batch): the original's and the folded model's p50, and the speedup."""

    backend: str
    provider: str
    batch: int
    original: float | None = None
    folded: float | None = None
    speedup: SpeedupEntry | None = None


def latency_groups(latency: Sequence[LatencyResult], speedup: Sequence[SpeedupEntry]) -> list[LatencyGroup]:
    """Latency entries paired per (backend, provider, batch): original and folded p50 and the speedup."""
    groups: dict[tuple[str, str, int], LatencyGroup] = {}
    for entry in latency:
        key = (entry.backend, entry.provider, entry.batch)
        group = groups.setdefault(key, LatencyGroup(*key))
        if entry.model == "original":
            group.original = entry.p50_ms
        elif entry.model == "folded":
            group.folded = entry.p50_ms
    for item in speedup:
        key = (item.backend, item.provider, item.batch)
        if key in groups:
            groups[key].speedup = item
    return list(groups.values())


def spread_text(speedup: SpeedupEntry | None) -> str:
    low, high = (speedup.speedup_low, speedup.speedup_high) if speedup else (None, None)
    return "" if low is None or high is None else f"{low:.2f}–{high:.2f}×"


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


def num(value: Any) -> str:
    """An error or tolerance as ``2.1e-06``; "n/a" when missing (None, or NaN: a tolerance an older report's
    check did not record)."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.1e}"


def pct(value: Any) -> str:
    return "" if value is None else f"{100 * float(value):.1f}%"


def ms(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f} ms"


def ratio_text(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.2f}×"


def times(value: float) -> str:
    """A ratio as ``1.67×``, ``12.5×`` or ``33,116×``."""
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:,.{digits}f}×"


def size(value: Any) -> str:
    if value is None:
        return "size unknown"
    kib = float(value) / 1024
    return f"{kib:.1f} KiB" if kib < 1024 else f"{kib / 1024:.1f} MiB"


def _cosine(value: Any) -> str:
    return "" if value is None else f"{float(value):.6f}"
